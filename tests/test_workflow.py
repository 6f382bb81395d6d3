"""The Snakemake DAG: `all` dry-runs on the embedded default, and a tiny real run completes and is
then a no-op; a bad config value is rejected at start in one line."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _workdir(tmp_path: Path) -> Path:
    for name in ("Snakefile", "workflow", "config"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    return tmp_path


def _snakemake(workdir, *args):
    # the rules call the `eam` command installed beside this interpreter
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([*SNAKEMAKE, "--cores", "2", *args], cwd=workdir, capture_output=True, text=True,
                          timeout=900, env=env)


def test_dry_run_of_all_on_the_default_config(tmp_path):
    p = _snakemake(_workdir(tmp_path), "-n", "all")
    assert p.returncode == 0, p.stderr
    assert "gmm_run" in p.stdout and "gmm_report" in p.stdout


def test_tiny_real_run_then_noop(tmp_path):
    wd = _workdir(tmp_path)
    (wd / "tiny.yaml").write_text(
        "gmm:\n  cases: [mix2d_linear]\n  variants: [am, eam-endpoint]\n  seeds: [0]\n  iters: 3\n")
    p = _snakemake(wd, "all", "--configfile", "tiny.yaml")
    assert p.returncode == 0, p.stderr[-3000:]
    assert (wd / "results/gmm/report/table.md").is_file()
    assert (wd / "results/gmm/report/mix2d_linear.png").is_file()
    again = _snakemake(wd, "-n", "all", "--configfile", "tiny.yaml")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.parametrize("bad,needle", [
    ("gmm:\n  cases: [mix2d_linear]\n  variants: [sgd]\n  seeds: [0]\n", "sgd"),
    ("gmm:\n  cases: [no_such_case]\n  variants: [am]\n  seeds: [0]\n", "no_such_case"),
    ("gmm:\n  cases: [mix2d_linear]\n  variants: [am]\n  seeds: [0]\n  delta: 2.0\n", "delta"),
])
def test_bad_config_is_rejected(tmp_path, bad, needle):
    wd = _workdir(tmp_path)
    (wd / "bad.yaml").write_text(bad)
    p = _snakemake(wd, "-n", "all", "--configfile", "bad.yaml")
    assert p.returncode != 0 and needle in p.stderr + p.stdout
