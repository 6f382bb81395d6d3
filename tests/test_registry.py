"""Plugins are declared once: the README's "Adding a reward", followed in a copy of the package, makes a new
reward visible to `eam list`, the reward loader and the text-to-image workflow's config check, by that one
file alone; a misspelt name stops the workflow in one line that lists the registered ones."""
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


@pytest.fixture(scope="module")
def with_new_reward(tmp_path_factory):
    """A copy of `eam/` with the README's example reward added, and an environment that imports it."""
    root = tmp_path_factory.mktemp("repo")
    for name in ("eam", "workflow", "config", "profiles"):  # Snakemake imports from its Snakefile's folder first
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("Snakefile", "environment.yml"):
        shutil.copy(ROOT / name, root / name)
    path, code = _howto("reward")
    (root / path).write_text(code)
    changed = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                     if not (ROOT / p.relative_to(root)).exists() or (ROOT / p.relative_to(root)).read_bytes() != p.read_bytes())
    assert changed == [path], changed  # one file, nothing else touched
    return {**os.environ, "PYTHONPATH": str(root)}


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
