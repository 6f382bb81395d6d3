"""Plugins are declared once: the README's "Adding a reward", followed in a copy of the package, makes a new
reward visible to `eam list`, the reward loader and the text-to-image workflow's config check, by that one
file alone; a misspelt name stops the workflow in one line that lists the registered ones. "Adding a base
model", followed the same way, gives a model that `eam list` shows and AM and EAM fine-tune."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eam.registry import catalogue, register

ROOT = Path(__file__).resolve().parents[1]


def _howto(tag: str) -> tuple[str, str]:
    """(path, code) of the README block after `<!-- howto-TAG: PATH -->`."""
    m = re.search(rf"<!-- howto-{tag}: (\S+) -->\n```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert m, f"README has no how-to block for {tag}"
    return m.group(1), m.group(2)


def _copy_with(tmp_path_factory, tag: str) -> dict:
    """A copy of the project with the README's example file for `tag` added (and nothing else changed), and an
    environment that imports it."""
    root = tmp_path_factory.mktemp(f"repo-{tag}")
    for name in ("eam", "workflow", "config", "profiles"):  # Snakemake imports from its Snakefile's folder first
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("Snakefile", "environment.yml"):
        shutil.copy(ROOT / name, root / name)
    path, code = _howto(tag)
    (root / path).write_text(code)
    changed = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                     if not (ROOT / p.relative_to(root)).exists() or (ROOT / p.relative_to(root)).read_bytes() != p.read_bytes())
    assert changed == [path], changed  # one file, nothing else touched
    return {**os.environ, "PYTHONPATH": str(root)}


@pytest.fixture(scope="module")
def with_new_reward(tmp_path_factory):
    return _copy_with(tmp_path_factory, "reward")


@pytest.fixture(scope="module")
def with_new_model(tmp_path_factory):
    return _copy_with(tmp_path_factory, "model")


def _python(env, code: str) -> str:
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd="/")
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def test_the_new_reward_is_listed_loaded_and_differentiable(with_new_reward):
    listed = json.loads(subprocess.run([sys.executable, "-m", "eam.cli", "list", "--json"], env=with_new_reward,
                                       capture_output=True, text=True, check=True, cwd="/").stdout)
    assert listed["reward"]["saturation"]["domain"] == "image" and listed["reward"]["saturation"]["weights"] is False
    out = _python(with_new_reward, """
import numpy as np, torch
from PIL import Image
from eam.rewards import load_reward, reward_grad
r = load_reward("saturation")
x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
value, grad = reward_grad(r, x)
# independent: per pixel max - min over the channels, averaged, and its finite difference
exact = np.array([np.mean(np.max(a, 0) - np.min(a, 0)) for a in x.numpy()])
e = torch.zeros_like(x); e[1, 2, 3, 4] = 1e-6
fd = float((r(x + e) - r(x - e))[1] / 2e-6)
u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
pil = r.score_pil([Image.fromarray(a) for a in u8], ["a", "b", "c"])
print(float(abs(value.numpy() - exact).max()), abs(fd - float(grad[1, 2, 3, 4])),
      float((pil - r(torch.from_numpy(u8).permute(0, 3, 1, 2).double() / 255)).abs().max()))
""")
    err_value, err_grad, err_pil = map(float, out.split())
    assert err_value < 1e-12 and err_grad < 1e-6 and err_pil < 1e-6, out


def _snakemake(repo: Path, config: Path, env):
    """A dry run of `all` with the Snakefile of `repo`, from the config's folder (`python -m` imports from the
    current folder first: not from the project's checkout)."""
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(config),
                           "--directory", str(config.parent), "--snakefile", str(repo / "Snakefile"), "-n", "-p", "all"],
                          capture_output=True, text=True, timeout=900, env=env, cwd=config.parent)


def test_the_workflow_accepts_the_new_reward_and_names_the_choices_otherwise(with_new_reward, tmp_path):
    from test_workflow_t2i import _tiny_config

    repo = Path(with_new_reward["PYTHONPATH"])
    config = _tiny_config(tmp_path, "sd3", rewards=["saturation"], metrics=["saturation", "clipscore"])
    p = _snakemake(repo, config, with_new_reward)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert "--reward saturation" in p.stdout and "--metric saturation " in p.stdout
    p = _snakemake(ROOT, config, os.environ)  # the project as it is: no such reward
    out = (p.stdout + p.stderr).splitlines()
    assert p.returncode != 0 and any(line.startswith("config t2i.rewards: 'saturation' is not a registered image "
                                                     "reward; registered: aesthetics, clipscore") for line in out), out


def test_a_registration_declares_exactly_its_traits():
    with pytest.raises(TypeError, match=r"must declare exactly \['domain', 'features', 'weights'\]"):
        register("reward", "no_traits")
    assert {"sd3", "sd15"} <= {n for n, t in catalogue()["model"].items() if t["domain"] == "image"}


def test_the_new_model_is_listed_guided_fine_tuned_and_sampled(with_new_model, tmp_path):
    env = {**with_new_model, "OMP_NUM_THREADS": "1"}
    listed = json.loads(subprocess.run([sys.executable, "-m", "eam.cli", "list", "--json"], env=env,
                                       capture_output=True, text=True, check=True, cwd="/").stdout)
    assert listed["model"]["digits_mlp"]["domain"] == "digits"
    base = tmp_path / "base"
    out = _python(env, f"""
import torch
from eam.adapters.digits_mlp import DigitsMLP, MLPNet
from eam.prompts import PromptBatch
torch.manual_seed(0)
DigitsMLP(MLPNet(hidden=32)).save({str(base)!r})
m = DigitsMLP.load({str(base)!r}, guidance_scale=3.0)
x, t = torch.randn(4, 1, 8, 8), torch.rand(4)
labels = torch.tensor([1, 2, 3, 4])
cond = PromptBatch(["a"] * 4, labels)
v_c, v_u = m.net(x, t, labels), m.net(x, t, torch.full_like(labels, 10))  # two separate calls
print(float((m(x, t, cond) - (v_u + 3.0 * (v_c - v_u))).abs().max()), m.cost)
""")
    err, cost = out.split()
    assert float(err) < 1e-5 and cost == "2"
    prompts = tmp_path / "prompts"
    settings = tmp_path / "s.yaml"
    settings.write_text("batch: 4\neval_every: 1\neval_per_prompt: 2\neval_steps: 2\nckpt_every: 1\nlr: 1.0e-3\n"
                        "am: {n_steps: 4, n_last: 2, n_random: 1}\neam: {ode_steps: 2, n_times: 2}\n")
    eam = [sys.executable, "-m", "eam.cli"]
    run = lambda *a: subprocess.run([*eam, *a], env=env, capture_output=True, text=True, timeout=300, cwd="/")  # noqa: E731
    p = run("prompts", str(ROOT / "config/prompts/digits.txt"), "--domain", "digits", "--out", str(prompts))
    assert p.returncode == 0, p.stderr
    for method in ("am", "eam"):
        p = run("finetune", "--model", "digits_mlp", "--model-path", str(base), "--reward", "stroke_quality",
                "--method", method, "--lam", "5", "--iters", "2", "--settings", str(settings),
                "--prompts", str(prompts / "train.jsonl"), "--eval-prompts", str(prompts / "eval.jsonl"),
                "--out", str(tmp_path / method), "--quiet")
        assert p.returncode == 0, p.stderr[-2000:]
        rows = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
        assert [r["iter"] for r in rows] == [0, 1, 2] and all(abs(r["loss"]) < 1e6 for r in rows[1:])
    p = run("sample", "--model", "digits_mlp", "--model-path", str(tmp_path / "eam"), "--prompts",
            str(prompts / "eval.jsonl"), "--per-prompt", "2", "--steps", "2", "--out", str(tmp_path / "s.safetensors"))
    assert p.returncode == 0, p.stderr[-2000:]
    changed = _python(env, f"""
from safetensors.torch import load_file
a, b = load_file({str(base / "model.safetensors")!r}), load_file({str(tmp_path / "eam/model.safetensors")!r})
print(max(float((a[k] - b[k]).abs().max()) for k in a))
""")
    assert float(changed) > 0  # fine-tuning moved the weights, and the result loads as the same model
