"""The Snakemake DAG: `all` dry-runs on the embedded default, and a tiny real run completes and is
then a no-op; a bad config value is rejected at start in one line."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import json

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _workdir(tmp_path: Path) -> Path:
    for name in ("Snakefile", "workflow", "config", "environment.yml"):  # every rule names environment.yml
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    return tmp_path


def _snakemake(workdir, *args):
    # the rules call the `eam` command installed beside this interpreter
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([*SNAKEMAKE, "--cores", "2", *args], cwd=workdir, capture_output=True, text=True,
                          timeout=900, env=env)


def test_dry_run_of_all_on_the_default_config(tmp_path):
    p = _snakemake(_workdir(tmp_path), "-n", "-p", "all")
    assert p.returncode == 0, p.stderr
    for rule in ("gmm_run", "gmm_report", "digits_prompts", "digits_base", "digits_reward_model", "digits_correction",
                 "digits_anchor", "digits_finetune", "digits_sample", "digits_score", "digits_report", "bench_prompts",
                 "bench"):
        assert rule in p.stdout, rule
    # the default EAM (corrected) runs share the correction and the anchor (λ = 10 on 3 seeds, the λ = 0 control on
    # the first: control_seeds 1); AM uses neither
    runs = [line for line in p.stdout.splitlines() if "eam finetune" in line and "--anchor-only" not in line
            and "eam.sampler=base" not in line]
    anchored = [line for line in runs if "--method eam " in line]
    assert len(anchored) == 4 and all("--set eam.correction=results/digits/models/correction --set "
                                      "eam.anchor=results/digits/models/anchor.safetensors" in line for line in anchored)
    assert all("eam.anchor" not in line for line in runs if "--method am " in line)
    assert sum("--method am " in line for line in runs) == 4 and "eam gmm" in p.stdout and "--set eval_every=200" in p.stdout


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/sd3.yaml", "config/sd15.yaml", "config/bench.yaml"])
def test_lint_is_clean(tmp_path, configfile):
    """`snakemake --lint` passes (functions in common.smk, every path from input/output, a conda env per rule)
    and the schema's draft is one Snakemake validates without warnings."""
    p = _snakemake(_workdir(tmp_path), "--lint", "--configfile", configfile)
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "Congratulations, your workflow is in a good condition" in out, out[-3000:]
    assert "No validator found for JSON Schema" not in out


@pytest.mark.slow(minutes=3)
def test_tiny_real_run_then_noop_and_resume(tmp_path):
    wd = _workdir(tmp_path)
    shutil.copytree(ROOT / "tests" / "data", wd / "tests" / "data")
    tiny = ["--configfile", "tests/data/tiny_config.yaml"]
    p = _snakemake(wd, "all", *tiny)
    assert p.returncode == 0, p.stderr[-3000:]
    for f in ("gmm/report/table.md", "gmm/report/mix2d_linear.png", "digits/report/table.md", "digits/report/table.tex",
              "digits/report/table.csv", "digits/report/reward_vs_time.png", "digits/report/samples.png",
              "digits/report/tradeoff.png", "digits/report/time_to_threshold.csv", "digits/report/time_to_quality.md",
              "digits/report/time_to_quality.png", "digits/report/verdict.md", "digits/truth/digit_classifier/lam10/truth.json",
              "bench/digits/bench.md", "bench/digits/bench.png"):
        assert (wd / "results" / f).is_file(), f
    # the λ = 0 control: AM and the default EAM (residual) leave the base exactly where it was; the endpoint
    # ablation drifts even without a reward (docs/method.md §5.4, §9)
    scores = lambda m: json.loads((wd / f"results/digits/scores/{m}/digit_classifier/lam0/seed0.json").read_text())  # noqa: E731
    assert scores("am")["fd_to_base"] < 1e-6 and scores("eam")["fd_to_base"] < 1e-6
    assert scores("eam-endpoint")["fd_to_base"] > 1e-3
    assert "distance_to_pstar" in scores("eam")
    again = _snakemake(wd, "-n", "all", *tiny)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    # a fine-tuning job killed after a checkpoint: its outputs are gone, its work folder holds the state
    run = wd / "results/digits/runs/eam/digit_classifier/lam10/seed0"
    state = wd / "results/digits/runs/eam/digit_classifier/lam10/seed0.work"
    from eam.checkpoint import save_training_state

    log = (run / "metrics.jsonl").read_text().splitlines()
    downstream = [*run.iterdir(), *(wd / "results/digits/report").iterdir(),
                  wd / "results/digits/samples/eam/digit_classifier/lam10/seed0.safetensors",
                  wd / "results/digits/scores/eam/digit_classifier/lam10/seed0.json"]
    for f in downstream:  # killed mid-way: nothing after the job exists yet
        f.unlink()
    state.mkdir()
    (state / "metrics.jsonl").write_text("\n".join(log[:3]) + "\n")
    save_training_state(state / "ckpt-00000002.pt", **_state_after_two_steps(wd, log))
    p = _snakemake(wd, "all", *tiny)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resuming" in (wd / "results/logs/digits/runs/eam/digit_classifier/lam10/seed0.log").read_text()
    rows = [json.loads(line)["iter"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows == [0, 1, 2, 3, 4]


def _state_after_two_steps(wd, log):
    """A checkpoint as the trainer writes it at step 2 (weights of the base, fresh optimiser)."""
    import torch

    from eam.adapters.digits_flow import DigitsFlow
    from eam.checkpoint import rng_state

    model = DigitsFlow.load(wd / "results/digits/models/base")
    opt = torch.optim.Adam(model.trainable_parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    row = json.loads(log[2])
    import yaml

    from eam.finetune import FinetuneConfig, run_identity

    settings = yaml.safe_load((wd / "tests/data/tiny_finetune.yaml").read_text())
    cfg = FinetuneConfig.from_dict({**settings, "method": "eam", "lam": 10.0, "seed": 0, "guidance_scale": 1.0})
    identity = run_identity(cfg, "digits_flow", wd / "results/digits/models/base", "digit_classifier")
    return dict(identity=identity, step=2, model=model.trainable_state(), opt=opt.state_dict(), sched=sched.state_dict(), rng=rng_state(),
                nfe={k[4:]: v for k, v in row.items() if k.startswith("nfe_") and k != "nfe_total"},
                seconds=row["wall_clock_s"], clipper=None, log_lines=3)


@pytest.mark.parametrize("bad,needle", [
    ("gmm:\n  cases: [mix2d_linear]\n  variants: [sgd]\n  seeds: [0]\n", "sgd"),
    ("gmm:\n  cases: [no_such_case]\n  variants: [am]\n  seeds: [0]\n", "no_such_case"),
    ("gmm:\n  cases: [mix2d_linear]\n  variants: [am]\n  seeds: [0]\n  delta: 2.0\n", "delta"),
    ("digits:\n  methods: [sgd]\n", "sgd"),
    ("digits:\n  rewards: [pickscore_v9]\n", "pickscore_v9"),
    ("digits:\n  prompts: config/prompts/missing.txt\n", "missing.txt"),
    ("digits:\n  lambdas: [-1]\n", "-1"),
])
def test_bad_config_is_rejected(tmp_path, bad, needle):
    wd = _workdir(tmp_path)
    (wd / "bad.yaml").write_text(bad)
    p = _snakemake(wd, "-n", "all", "--configfile", "bad.yaml")
    assert p.returncode != 0 and needle in p.stderr + p.stdout


@pytest.mark.parametrize("config,settings,line", [
    ("digits:\n  lamdas: [0]\n", None,  # a misspelt key: one line naming it (snakemake's own check printed 106)
     "config digits: Additional properties are not allowed ('lamdas' was unexpected) (see config/README.md)"),
    ("digits:\n  settings: s.yaml\n", "iters: 10\nlearning_rate: 3\n",  # checked at DAG start, not in the first job
     "s.yaml: unknown fine-tuning setting 'learning_rate'"),
    ("digits:\n  settings: s.yaml\n", "iters: 10\neam: {ode_steps: [3\n",  # a YAML error names file and line
     "s.yaml, line 3: not valid YAML"),
    ("digits:\n  rewards: [pickscore]\n  metrics: [pickscore]\n", None,  # registered, but not a digits reward
     "config digits.rewards: 'pickscore' is not a registered digits reward; registered: digit_classifier, digit_clip,"),
])
def test_config_and_settings_errors_are_one_line(tmp_path, config, settings, line):
    wd = _workdir(tmp_path)
    (wd / "bad.yaml").write_text(config)
    if settings:
        (wd / "s.yaml").write_text(settings)
    p = _snakemake(wd, "-n", "all", "--configfile", "bad.yaml")
    out = p.stdout + p.stderr
    assert p.returncode != 0 and any(l.startswith(line) for l in out.splitlines()), out[-2000:]
    assert len([l for l in out.splitlines() if l.strip() and not l.startswith("  File ")]) <= 4, out
