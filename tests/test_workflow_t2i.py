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


def test_corrected_eam_gets_the_shared_correction_and_anchor_rules(tmp_path):
    """The t2i entry runs the same rule set as digits: settings choosing `corrected` add its one-off correction
    fit and anchor for the base, and every EAM run (not AM) reads both."""
    settings = {**TINY_SETTINGS, "eam": {**TINY_SETTINGS["eam"], "base_score": "corrected", "anchor_batches": 2}}
    cfg = _tiny_config(tmp_path, "sd3", rewards=["pickscore"], lambdas=[10], seeds=[0, 1])
    Path(yaml.safe_load(cfg.read_text())["t2i"]["settings"]).write_text(yaml.safe_dump(settings))
    p = _snakemake(cfg, "-n", "-p", "all")
    assert p.returncode == 0, p.stderr[-3000:]
    assert re.search(r"^t2i_correction\s+1$", p.stdout, re.M) and re.search(r"^t2i_anchor\s+1$", p.stdout, re.M)
    runs = [ln for ln in p.stdout.splitlines() if "eam finetune" in ln]
    fit = [ln for ln in runs if "eam.sampler=base" in ln]
    assert len(fit) == 1 and "--method eam-endpoint --lam 0" in fit[0] and "--out results/sd3/models/correction" in fit[0]
    assert f"--reward pickscore --reward-path {tmp_path / 'models' / 'clip'}" in fit[0], fit[0]
    uses = "--set eam.correction=results/sd3/models/correction --set eam.anchor=results/sd3/models/anchor.safetensors"
    assert sum(uses in ln for ln in runs if "--method eam " in ln) == 2
    assert all("eam.correction" not in ln for ln in runs if "--method am " in ln)


def test_a_t2i_name_that_is_another_benchmarks_folder_is_refused(tmp_path):
    cfg = _tiny_config(tmp_path, "sd3")
    cfg.write_text(cfg.read_text().replace("name: sd3", "name: digits"))
    p = _snakemake(cfg, "-n", "all")
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if "t2i.name" in ln]
    assert p.returncode != 0 and len(lines) == 1 and "'digits' is another benchmark's results folder" in lines[0]


@pytest.mark.slow(minutes=2.5)
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


FAKE_SLURM = {"sbatch": '#!/bin/sh\necho "$@" >> "$FAKE_SBATCH_LOG"\nexit 1\n',  # records the call, refuses the job
              **{c: "#!/bin/sh\nexit 0\n" for c in ("sinfo", "squeue", "sacct", "scontrol", "sacctmgr", "sshare")}}


def _cluster_env(tmp_path: Path) -> dict:
    """The README's cluster set-up (the profile linked into Snakemake's config folder) in a private
    XDG_CONFIG_HOME, and SLURM's client commands replaced by stubs that record each sbatch call."""
    xdg = tmp_path / "xdg"
    (xdg / "snakemake").mkdir(parents=True)
    (xdg / "snakemake" / "slurm").symlink_to(ROOT / "profiles" / "slurm")  # README: ln -s "$PWD/profiles/slurm" …
    stubs = tmp_path / "slurm_bin"
    stubs.mkdir()
    for name, text in FAKE_SLURM.items():
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    return {**os.environ, "XDG_CONFIG_HOME": str(xdg), "FAKE_SBATCH_LOG": str(tmp_path / "sbatch.log"),
            "PATH": os.pathsep.join([str(stubs), str(Path(sys.executable).parent), os.environ.get("PATH", "")])}


SITE = ["--default-resources", "slurm_partition=gpu", "slurm_account=proj", "runtime=60", "mem_mb=4000"]


@pytest.mark.parametrize("profile", ["slurm", "profiles/slurm"])
def test_cluster_line_dry_runs_from_the_repo_root(tmp_path, profile):
    cfg = _tiny_config(tmp_path, "sd3")
    p = subprocess.run([sys.executable, "-m", "snakemake", "all", "--profile", profile, "--configfile", str(cfg),
                        "--directory", str(cfg.parent), "-n", *SITE],
                       cwd=ROOT, capture_output=True, text=True, timeout=900, env=_cluster_env(tmp_path))
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert re.search(r"^t2i_finetune\s+36$", p.stdout, re.M), p.stdout[-2000:]


def test_gpu_rule_is_submitted_with_its_cpus_gpus_partition_and_account(tmp_path):
    """What the slurm executor hands to sbatch for a fine-tuning job: the rule's 4 threads as
    --cpus-per-task (no profile default of one CPU, no workflow-profile `cores` cap), its GPU, and the
    partition and account of the README's line."""
    cfg = _tiny_config(tmp_path, "sd3")
    env = _cluster_env(tmp_path)
    local = subprocess.run([sys.executable, "-m", "snakemake", "results/sd3/prompts/train.jsonl", "--cores", "1",
                            "--configfile", str(cfg), "--directory", str(cfg.parent)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert local.returncode == 0, local.stderr[-2000:]
    run = "results/sd3/runs/eam/pickscore/lam10/seed0/config.json"
    p = subprocess.run([sys.executable, "-m", "snakemake", run, "--profile", "slurm", "--configfile", str(cfg), "--directory", str(cfg.parent), "--retries", "0", *SITE],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode != 0  # every submission is refused by the stub
    calls = {re.search(r"--comment rule_(\w+?)_wildcards", c).group(1): c.split()
             for c in (tmp_path / "sbatch.log").read_text().splitlines()}
    ft = calls["t2i_finetune"]
    assert "--cpus-per-task=4" in ft and ft[ft.index("-p") + 1] == "gpu" and ft[ft.index("-A") + 1] == "proj", ft
    assert any(a in ("--gpus=1", "--gres=gpu:1") for a in ft), ft
    assert "--mem" in ft and ft[ft.index("--mem") + 1] == "64000", ft



def test_slurm_profile_without_slurm_fails_at_start_with_one_line(tmp_path):
    """On a machine without SLURM's commands, the cluster line stops before any job with one line."""
    nobin = tmp_path / "bin"  # this machine's PATH, less SLURM's client commands
    nobin.mkdir()
    for d in [str(Path(sys.executable).parent), *os.environ.get("PATH", "").split(os.pathsep)]:
        for f in (Path(d).iterdir() if Path(d).is_dir() else []):
            if f.name not in FAKE_SLURM and f.name != "srun" and not (nobin / f.name).exists():
                (nobin / f.name).symlink_to(f)
    cfg = _tiny_config(tmp_path, "sd3")
    p = subprocess.run([sys.executable, "-m", "snakemake", "all", "--profile", "profiles/slurm", "--configfile", str(cfg),
                        "--directory", str(cfg.parent), *SITE],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "PATH": str(nobin)})
    out = p.stdout + p.stderr
    assert p.returncode != 0
    lines = [ln for ln in out.splitlines() if "SLURM's commands" in ln]
    assert len(lines) == 1 and "snakemake --cores N all" in lines[0], out[-2000:]
    assert "Submitted" not in out and "sacct" not in out.replace("(sbatch, squeue)", "")


def test_gpu_check_is_prepared(tmp_path):
    """scripts/gpu_check.sh's DAG (config/gpu_check.yaml) dry-runs: the digits rules on CUDA settings and
    `eam bench` at the SD3-medium and SD1.5 architectures; without a GPU the script stops at once with one
    line saying so."""
    p = subprocess.run([sys.executable, "-m", "snakemake", "-n", "all", "--configfile", "config/gpu_check.yaml",
                        "--cores", "16"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", p.stdout, re.M))
    assert jobs["bench"] == "2" and jobs["bench_weights"] == "4" and jobs["digits_finetune"] == "4", jobs
    settings = yaml.safe_load((ROOT / "config/gpu_check/finetune.yaml").read_text())
    assert settings["device"] == "cuda"
    for script in ("gpu_check.sh", "gpu_wheels.sh"):
        assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)]).returncode == 0
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), str(tmp_path / "out")], capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1] == (
        "gpu_check: no CUDA device visible to torch; run this on a GPU machine"), r.stderr[-2000:]
