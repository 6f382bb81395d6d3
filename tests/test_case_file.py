"""Gaussian-mixture case files (the ground truth of method.md §7.6): schema errors are one-line
CaseErrors (ValueErrors) naming the offending key, and the CLI turns them into exit code 2."""
import copy
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from eam.bench_gmm import CaseError, load_case, parse_case
from eam.cli import main
from eam.registry import lookup, names, register
from eam.rewards import Reward

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64

VALID = {
    "description": "two components, linear reward",
    "dim": 2,
    "components": [
        {"weight": 0.25, "mean": [-1.0, 0.5], "cov": [[0.3, 0.1], [0.1, 0.2]]},
        {"weight": 0.75, "mean": [1.5, -0.5], "cov": [[0.5, 0.0], [0.0, 0.1]]},
    ],
    "reward": {"type": "linear", "c": [1.0, -0.5]},
    "lambda": 0.8,
}
QUADRATIC = {"type": "quadratic", "center": [0.5, 0.5], "tau": 2.0}


def _mutate(path, value=None, delete=False, reward=None):
    d = copy.deepcopy(VALID)
    if reward is not None:
        d["reward"] = copy.deepcopy(reward)
    *parents, last = path
    node = d
    for p in parents:
        node = node[p]
    if delete:
        del node[last]
    else:
        node[last] = value
    return d


# (case id, mutated mapping, a string the message must contain)
BAD = [
    ("missing_lambda", _mutate(["lambda"], delete=True), "lambda"),
    ("unknown_key", _mutate(["temperature"], 1.0), "temperature"),
    ("wrong_length_mean", _mutate(["components", 1, "mean"], [1.0, 2.0, 3.0]), "components[1].mean"),
    ("non_symmetric_cov", _mutate(["components", 0, "cov"], [[0.3, 0.2], [0.0, 0.2]]), "components[0].cov"),
    ("non_pd_cov", _mutate(["components", 1, "cov"], [[1.0, 2.0], [2.0, 1.0]]), "components[1].cov"),
    ("unknown_reward_type", _mutate(["reward", "type"], "cubic"), "reward.type"),
    ("non_numeric_tau", _mutate(["reward", "tau"], "abc", reward=QUADRATIC), "reward.tau"),
    ("negative_weight", _mutate(["components", 0, "weight"], -0.25), "components[0].weight"),
]


def _check_error(exc_info, key):
    msg = str(exc_info.value)
    assert isinstance(exc_info.value, ValueError)
    assert "\n" not in msg and msg.strip() == msg and msg
    assert key in msg, msg


@pytest.mark.parametrize("data,key", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_parse_case_rejects_bad_case_naming_the_key(data, key):
    """§7.6 ground truth: parse_case raises CaseError (a ValueError) with a single-line message that names
    the offending key."""
    with pytest.raises(CaseError) as exc_info:
        parse_case(data)
    _check_error(exc_info, key)


@pytest.mark.parametrize("data,key", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_load_case_rejects_bad_file_naming_the_key(tmp_path, data, key):
    """§7.6 ground truth: load_case on the same mappings written as YAML raises a one-line CaseError
    naming the file and the key."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CaseError) as exc_info:
        load_case(str(path))
    _check_error(exc_info, key)
    assert str(path) in str(exc_info.value)


@pytest.mark.parametrize("path,value,key", [
    (["components", 0, "mean"], [math.nan, 0.0], "components[0].mean"),
    (["components", 1, "cov"], [[math.inf, 0.0], [0.0, 0.1]], "components[1].cov"),
    (["reward", "c"], [math.inf, 0.0], "reward.c"),
    (["components", 0, "mean"], [True, 0.0], "components[0].mean"),
], ids=["nan_mean", "inf_cov", "inf_reward_c", "bool_mean"])
def test_non_finite_or_boolean_vector_entries_rejected(path, value, key):
    """§7.6 ground truth: vector and matrix entries must be finite numbers (as scalars already must be):
    a NaN mean, an infinite covariance or reward coefficient, or a boolean is a CaseError naming the key."""
    with pytest.raises(CaseError) as exc_info:
        parse_case(_mutate(path, value))
    _check_error(exc_info, key)


def test_load_case_unreadable_or_invalid_yaml(tmp_path):
    """A missing file and a file that is not YAML are one-line CaseErrors naming the path."""
    for path, text in [(tmp_path / "absent.yaml", None), (tmp_path / "broken.yaml", "dim: [1, 2\n  x: {")]:
        if text is not None:
            path.write_text(text)
        with pytest.raises(CaseError) as exc_info:
            load_case(str(path))
        _check_error(exc_info, str(path))


def test_valid_case_parses_to_the_right_mixture_reward_and_target(tmp_path):
    """§7.6 ground truth: a valid case gives the mixture (weights normalised), the reward r(x) = cᵀx, and the
    exact tilted target; the quadratic variant gives r(x) = -‖x - center‖²/(2τ)."""
    path = tmp_path / "good_case.yaml"
    path.write_text(yaml.safe_dump(VALID))
    case = load_case(str(path))
    assert case.name == "good_case" and case.dim == 2 and case.lam == pytest.approx(0.8)
    torch.testing.assert_close(case.mixture.w, torch.tensor([0.25, 0.75], dtype=F64))
    torch.testing.assert_close(case.mixture.mu, torch.tensor([[-1.0, 0.5], [1.5, -0.5]], dtype=F64))
    x = torch.tensor([[1.0, 2.0], [-0.5, 3.0]], dtype=F64)
    torch.testing.assert_close(case.reward()(x).double(), x @ torch.tensor([1.0, -0.5], dtype=F64))
    quad = parse_case({**copy.deepcopy(VALID), "reward": QUADRATIC}, name="q")
    expected = -((x - torch.tensor([0.5, 0.5], dtype=F64)) ** 2).sum(1) / 4.0
    torch.testing.assert_close(quad.reward()(x).double(), expected)
    # the target is p_base e^{λ r} normalised: log p* - log p_base - λ r is one constant at any points
    pts = 2.0 * torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    for c in (case, quad):
        gap = c.target().log_prob(pts) - c.mixture.log_prob(pts) - c.lam * c.reward()(pts).double()
        assert float(gap.std()) < 1e-6 and abs(float(gap.mean())) > 1e-3, c.name  # constant, and not trivially 0


@pytest.mark.parametrize("path", sorted((ROOT / "config" / "gmm").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_case_files_parse(path):
    """The repository's own case files follow the schema."""
    case = load_case(str(path))
    assert case.mixture.w.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["missing_lambda", "non_pd_cov", "non_numeric_tau"])
def test_cli_bad_case_exits_2_with_one_line(tmp_path, name):
    """§7.6 ground truth via the CLI: `python -m eam.cli gmm --case BAD.yaml --method eam --out x.json`
    exits with code 2, prints exactly one line on stderr naming the key, and writes no result."""
    data, key = {b[0]: b[1:] for b in BAD}[name]
    case = tmp_path / "bad.yaml"
    case.write_text(yaml.safe_dump(data))
    out = tmp_path / "x.json"
    proc = subprocess.run([sys.executable, "-m", "eam.cli", "gmm", "--case", str(case), "--method", "eam",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert key in lines[0]
    assert not out.exists()


NEW_TOY_REWARD = '''"""r(x) = s·cᵀx: a new closed-form reward, in one file."""
import torch

from ..registry import register
from .base import Reward


@register("reward", "scaled_linear", domain="toy", weights=False, features=False)
class ScaledLinear(Reward):
    case_keys = {"c": "vector", "scale": "positive"}

    def __init__(self, c, scale):
        super().__init__()
        self.c, self.scale = torch.as_tensor(c, dtype=torch.float64), float(scale)

    def forward(self, x, cond=None):
        return self.scale * (x.double() @ self.c).to(x.dtype)

    def tilt(self, mixture, lam):
        return mixture.tilt_linear(self.scale * self.c, lam)
'''


def test_a_new_toy_reward_is_one_file_that_case_files_accept(tmp_path):
    """Case files follow the registry: a `toy` reward added as one file in a copy of the package (its
    `case_keys` and exact `tilt`) is accepted, its target is p_base e^{λ r} normalised (checked pointwise
    as above), and its missing key is named in one line."""
    shutil.copytree(ROOT / "eam", tmp_path / "eam", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "eam" / "rewards" / "scaled_linear.py").write_text(NEW_TOY_REWARD)
    case = {**copy.deepcopy(VALID), "reward": {"type": "scaled_linear", "c": [1.0, -0.5], "scale": 0.5}}
    code = f"""
import torch
from eam.bench_gmm import CaseError, parse_case
c = parse_case({case!r})
pts = 2.0 * torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
gap = c.target().log_prob(pts) - c.mixture.log_prob(pts) - c.lam * c.reward()(pts)
try:
    parse_case({{**{case!r}, "reward": {{"type": "scaled_linear", "c": [1.0, -0.5]}}}})
except CaseError as e:
    print(e)
print(float(gap.std()), float(gap.mean()))
"""
    p = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(tmp_path)}, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    message, numbers = p.stdout.strip().splitlines()
    assert message == "'reward' of type scaled_linear takes exactly the keys type, c, scale"
    std, mean = map(float, numbers.split())
    assert std < 1e-6 and abs(mean) > 1e-3


def test_a_toy_reward_without_its_tilt_is_refused_at_registration():
    """A `toy` reward must say how it tilts a mixture (and what a case gives it), or case files could not use it."""
    with pytest.raises(TypeError, match="must define tilt"):
        @register("reward", "no_tilt_here", domain="toy", weights=False, features=False)
        class NoTilt(Reward):
            case_keys = {"c": "vector"}
    assert "no_tilt_here" not in names("reward")


def test_the_gmm_model_starts_at_its_base_and_refuses_a_weights_path(tmp_path, capsys):
    """The `gmm` adapter is v_base + a residual that starts at zero (v_θ = v_base to the bit), and asked for weights
    (`eam sample`, or the `pair(path)` of `eam finetune --model gmm`) it says in one line to run `eam gmm`."""
    case = parse_case(copy.deepcopy(VALID))
    base, model = lookup("model", "gmm").pair(case.mixture, hidden=16, depth=2)
    x, t = torch.randn(8, 2), torch.rand(8)
    assert torch.equal(model(x, t), base(x, t)) and model.trainable_parameters()
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "--model", "gmm", "--model-path", str(tmp_path), "--prompts", str(tmp_path / "p.jsonl"),
              "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "run `eam gmm --case FILE`" in err, err
    with pytest.raises(ValueError, match="eam gmm --case"):
        lookup("model", "gmm").pair(str(tmp_path))
