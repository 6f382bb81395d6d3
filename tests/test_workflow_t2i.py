"""The paper configs (config/sd3.yaml, config/sd15.yaml) drive the same DAG: `all` dry-runs with them
pointed at tiny local models, and a tiny real SD3 run completes on CPU with the same report."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tiny.diffusers_models import sd3_pipeline, sd15_pipeline
from tiny.hf import clip_model

ROOT = Path(__file__).resolve().parents[1]
TINY_SETTINGS = {"iters": 2, "batch": 2, "lr": 1e-3, "eval_every": 1, "eval_per_prompt": 2, "eval_steps": 2,
                 "ckpt_every": 1, "device": "cpu",
                 "model": {"resolution": 16, "lora": {"rank": 2, "alpha": 2}},
                 "am": {"n_steps": 3, "n_last": 1, "n_random": 1}, "eam": {"ode_steps": 2, "n_times": 2}}


def _snakemake(config: Path, *args):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(config),
                           "--directory", str(config.parent), "--snakefile", str(ROOT / "Snakefile"), *args],
                          capture_output=True, text=True, timeout=900, env=env)


def _tiny_config(tmp_path: Path, name: str, **overrides) -> Path:
    """config/NAME.yaml with its model, settings and reward weights pointed at tiny local models."""
    cfg = yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())
    t2i = cfg["t2i"]
    build = sd3_pipeline if name == "sd3" else sd15_pipeline
    t2i["model_path"] = str(build(tmp_path / "models" / name))
    clip = tmp_path / "models" / "clip"
    if not clip.exists():
        clip_model(clip)
    settings = tmp_path / f"{name}_settings.yaml"
    settings.write_text(yaml.safe_dump(TINY_SETTINGS))
    t2i["settings"] = str(settings)
    t2i["prompts"] = {k: [str(ROOT / p) for p in v] for k, v in t2i["prompts"].items()}
    t2i["weights"] = {k: str(clip) for k in t2i["weights"]}
    t2i.update(overrides)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("name", ["sd3", "sd15"])
def test_paper_config_dry_runs_all(tmp_path, name):
    p = _snakemake(_tiny_config(tmp_path, name), "-n", "all")
    assert p.returncode == 0, p.stderr[-3000:]
    for rule in ("t2i_prompts", "t2i_finetune", "t2i_sample", "t2i_score", "t2i_report"):
        assert rule in p.stdout, rule
    assert "digits_" not in p.stdout and "gmm_" not in p.stdout
    n_runs = 2 * 2 * 3 * 3  # methods x rewards x lambdas x seeds of the paper config
    assert re.search(rf"^t2i_finetune\s+{n_runs}$", p.stdout, re.M), p.stdout[-2000:]


def test_tiny_sd3_run_completes(tmp_path):
    cfg = _tiny_config(tmp_path, "sd3", rewards=["pickscore"], metrics=["pickscore", "clipscore"], lambdas=[10],
                       seeds=[0], eval={"per_prompt": 2, "steps": 2}, guidance_scale=2.0, truth={"pool_per_prompt": 8})
    p = _snakemake(cfg, "all")
    assert p.returncode == 0, p.stderr[-3000:]
    report = tmp_path / "results" / "sd3" / "report"
    for f in ("table.md", "table.csv", "reward_vs_time.png", "samples.png", "time_to_threshold.csv", "time_to_quality.md",
              "verdict.md"):
        assert (report / f).is_file(), f
    table = (report / "table.md").read_text()
    assert "pickscore" in table and "clipscore" in table
    import json

    score = json.loads((tmp_path / "results/sd3/scores/eam/pickscore/lam10/seed0.json").read_text())
    assert score["guidance_scale"] == 2.0 and "cosine" in score["diversity_metric"]
    assert score["pstar"].endswith("truth/pickscore/lam10/pstar_a.safetensors") and score["distance_to_pstar"]["mean"] >= 0
    truth = json.loads((tmp_path / "results/sd3/truth/pickscore/lam10/truth.json").read_text())
    assert set(truth["metrics"]) == {"pickscore", "clipscore"} and len(truth["ess"]) == len(truth["metrics"]["pickscore"]["per_prompt"])
    run = json.loads((tmp_path / "results/sd3/runs/eam/pickscore/lam10/seed0/config.json").read_text())
    assert run["options"]["lora"]["rank"] == 2 and run["base"].endswith("sd3")
