"""The digits domain on tiny models trained here and saved in the real formats: loading through the
registry, one-line errors for missing weights, reward gradients against finite differences, AM and
EAM steps that train only the model, and a killed fine-tuning job that resumes to the same result."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eam.adapters.digits_flow import DigitsFlow
from eam.checkpoint import MissingWeights
from eam.digits import pretrain
from eam.finetune import FinetuneConfig
from eam.losses import AMConfig, EAMConfig, am_loss, eam_loss
from eam.prompts import PromptBatch, prepare
from eam.reference import LinearReference
from eam.registry import lookup
from eam.rewards import load_reward, reward_grad
from eam.report.finetune import time_to
from tiny.fd import assert_matches_central_difference

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ("digit_classifier", "heldout_classifier", "digit_clip")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("digits")
    train, ev = prepare(ROOT / "config/prompts/digits.txt", d / "prompts", "digits")
    pretrain.train_flow(d / "base", iters=5, channels=8, progress=False)
    pretrain.train_classifier("digit_classifier", d / "digit_classifier", epochs=1, progress=False)
    pretrain.train_classifier("heldout_classifier", d / "heldout_classifier", epochs=1, progress=False)
    pretrain.train_clip(d / "digit_clip", train, epochs=1, progress=False)
    return d


def _batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    return torch.randn(n, 1, 8, 8, generator=g), PromptBatch([f"a handwritten {int(c)}" for c in labels], labels)


def test_models_round_trip_through_the_registry(tiny):
    x, cond = _batch()
    t = torch.rand(len(x))
    a, b = lookup("model", "digits_flow").load(tiny / "base"), DigitsFlow.load(tiny / "base")
    assert torch.equal(a(x, t, cond), b(x, t, cond))
    for name in TRAINED:
        r = load_reward(name, tiny / name)(x, cond)
        assert r.shape == (len(x),) and torch.isfinite(r).all()
    assert (tiny / "base" / "model.safetensors").read_bytes()[:8] != b"PK\x03\x04"  # safetensors, not a zip pickle


def test_guidance_combines_conditional_and_null_predictions(tiny):
    x, cond = _batch()
    t = torch.rand(len(x))
    m = DigitsFlow.load(tiny / "base", guidance_scale=3.0)
    v_c = m.net(x, t, cond.labels)
    v_u = m.net(x, t, torch.full_like(cond.labels, 10))
    torch.testing.assert_close(m(x, t, cond), v_u + 3.0 * (v_c - v_u))


@pytest.mark.parametrize("name", ["digits_flow", *TRAINED])
def test_missing_weights_are_a_one_line_error(tmp_path, name, capsys):
    with pytest.raises(MissingWeights, match=r"not found in .*; train it with `eam digits-pretrain"):
        (lookup("model", name).load(tmp_path) if name == "digits_flow" else load_reward(name, tmp_path))
    from eam.cli import main

    with pytest.raises(SystemExit) as e:
        main(["sample", "--model", "digits_flow", "--model-path", str(tmp_path), "--prompts", "x.jsonl", "--out", "s"])
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", [*TRAINED, "stroke_quality"])
def test_reward_gradient_matches_finite_differences(tiny, name):
    reward = load_reward(name, tiny / name if name in TRAINED else None).double()
    x, cond = _batch(3, seed=1)
    x = x.double()
    _, g = reward_grad(reward, x, cond)
    assert_matches_central_difference(lambda y: reward(y, cond), x, g, rtol=1e-5, atol=1e-7, per_sample=True)


@pytest.mark.parametrize("method", ["am", "eam"])
def test_a_training_step_moves_only_the_model(tiny, method):
    base = DigitsFlow.load(tiny / "base").requires_grad_(False)
    model = DigitsFlow.load(tiny / "base")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    reward = load_reward("digit_classifier", tiny / "digit_classifier")
    x0, cond = _batch(4)
    if method == "am":
        out = am_loss(model, base, reward, 10.0, x0, AMConfig(n_steps=4, n_last=2, n_random=1), cond)
    else:
        out = eam_loss(model, base, reward, 10.0, x0, LinearReference(model.interpolant),
                       EAMConfig(ode_steps=2, ode_method="euler", n_times=2), cond)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert all(p.grad is None for p in base.parameters()) and all(p.grad is None for p in reward.parameters())
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())


def _finetune_cmd(tiny, out, iters, launcher=(sys.executable,), **extra):
    settings = {"iters": iters, "batch": 4, "eval_every": 3, "eval_per_prompt": 1, "eval_steps": 2, "ckpt_every": 3,
                "eam": {"ode_steps": 2, "ode_method": "euler", "n_times": 2}, **extra}
    path = Path(str(out) + ".settings.json")
    path.write_text(json.dumps(settings))
    return [*launcher, "-m", "eam.cli", "finetune", "--model", "digits_flow", "--model-path", str(tiny / "base"),
            "--reward", "digit_classifier", "--reward-path", str(tiny / "digit_classifier"), "--method", "eam",
            "--lam", "10", "--settings", str(path), "--prompts", str(tiny / "prompts/train.jsonl"),
            "--eval-prompts", str(tiny / "prompts/eval.jsonl"), "--out", str(out), "--quiet"]


def test_killed_run_resumes_to_the_same_result(tiny, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_finetune_cmd(tiny, straight, 60), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    p = subprocess.Popen(_finetune_cmd(tiny, killed, 60), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(p, Path(str(killed) + ".work"), 12)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (killed / "model.safetensors").exists()
    # the newest checkpoint is corrupt (say, the node died while writing it): resume from the one before
    newest = sorted(Path(str(killed) + ".work").glob("ckpt-*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:100])
    r = subprocess.run(_finetune_cmd(tiny, killed, 60), env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "resuming" in r.stdout and f"{newest} is unreadable" in r.stdout, r.stdout + r.stderr
    rows = [json.loads(line)["iter"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(61))  # no gap, no duplicate
    _assert_same_weights(straight, killed)


def _wait_for_checkpoint(p, work: Path, step: int):
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        done = sorted(work.glob("ckpt-*.pt"))
        if done and int(done[-1].stem.split("-")[1]) >= step:
            return
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be stopped; make it longer"
    raise AssertionError(f"no checkpoint of step {step} within 120 s")


def _assert_same_weights(dir_a, dir_b):
    a, b = DigitsFlow.load(dir_a), DigitsFlow.load(dir_b)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_sigterm_checkpoints_stops_and_resumes(tiny, tmp_path):
    """SLURM's preemption signal: the trainer writes a checkpoint at the end of the iteration and
    exits with 128 + 15; the same command resumes; the log has every iteration once."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    p = subprocess.Popen(_finetune_cmd(tiny, out, 60), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(p, Path(str(out) + ".work"), 3)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM at iteration" in err and "run the same command again" in err
    stopped_at = int(err.split("at iteration ")[1].split(";")[0])
    assert Path(str(out) + ".work", f"ckpt-{stopped_at:08d}.pt").exists()
    r = subprocess.run(_finetune_cmd(tiny, out, 60), env=env, capture_output=True, text=True)
    assert r.returncode == 0 and f"resuming {out} at iteration {stopped_at}" in r.stdout, r.stderr
    rows = [json.loads(line)["iter"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(61))


def test_corrected_fits_its_correction_on_base_samples_then_uses_it(tiny, tmp_path):
    """`corrected` end to end through the CLI (docs/method.md §5.5): the correction fit draws x_1 from the frozen
    base (no model forwards in its ledger), and the corrected run spends 1 + 2M base-sized forwards per x_1 on
    top of the sampler (one at x_1, v_base and u_ψ at each of the M loss rows); without the correction's folder
    it stops in one line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    fit, run = tmp_path / "correction", tmp_path / "run"
    cmd = _finetune_cmd(tiny, fit, 3)
    cmd[cmd.index("--method") + 1:cmd.index("--method") + 4] = ["eam-endpoint", "--lam", "0"]
    subprocess.run([*cmd, "--set", "eam.sampler=base"], check=True, env=env, capture_output=True)
    last = json.loads((fit / "metrics.jsonl").read_text().splitlines()[-1])
    B, K, M = 4, 2, 2  # _finetune_cmd's batch, ode_steps, n_times
    assert last["nfe_model_fwd"] == 0 and last["nfe_base_fwd"] == 3 * B * (K + 1)
    cmd = [*_finetune_cmd(tiny, run, 3), "--set", "eam.base_score=corrected"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "error: eam.base_score corrected needs eam.correction" in r.stderr.strip().splitlines()[-1]
    subprocess.run([*cmd, "--set", f"eam.correction={fit}", "--set", "eam.anchor_batches=2"], check=True, env=env,
                   capture_output=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # the anchor (§5.6): 2 batches of the same loss at λ = 0 before the first step, charged to the ledger
    assert rows[0]["nfe_base_fwd"] == 2 * B * (1 + 2 * M) and rows[0]["nfe_model_train"] == 2 * B * M
    assert rows[-1]["nfe_model_fwd"] == (3 + 2) * B * K and rows[-1]["nfe_base_fwd"] == (3 + 2) * B * (1 + 2 * M)
    assert rows[-1]["nfe_model_train"] == (3 + 2) * B * M
    # shared: the same anchor from a file (its cost the file's, not the run's), the same run to the bit
    anchor, shared = tmp_path / "anchor.safetensors", tmp_path / "shared"
    r = subprocess.run([*_finetune_cmd(tiny, anchor, 3), "--method", "eam-corrected", "--lam", "0", "--set",
                        f"eam.correction={fit}", "--set", "eam.anchor_batches=2", "--seed", "5", "--anchor-only"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "anchor from 2 batches" in r.stdout and not Path(str(anchor) + ".work").exists(), r.stderr
    shared_cmd = [*cmd, "--set", f"eam.correction={fit}", "--set", f"eam.anchor={anchor}", "--out", str(shared)]
    r = subprocess.run(shared_cmd, env=env, capture_output=True, text=True)  # the file holds 2 batches, not 400
    assert r.returncode != 0 and "was written for another eam" in r.stderr.strip().splitlines()[-1], r.stderr
    subprocess.run([*shared_cmd, "--set", "eam.anchor_batches=2"], check=True, env=env, capture_output=True)
    assert json.loads((shared / "metrics.jsonl").read_text().splitlines()[0])["nfe_total"] == 0
    _assert_same_weights(run, shared)
    r = subprocess.run([*shared_cmd, "--set", "eam.anchor_batches=2", "--set", "batch=8", "--out", str(tmp_path / "other")],
                       env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "was written for another batch" in r.stderr.strip().splitlines()[-1], r.stderr


@pytest.mark.parametrize("extra,needle", [
    (["--iters", "0"], "--iters must be at least 1, got 0"),
    (["--device", "cuda:0"], "device cuda:0 asked for, but torch sees no CUDA GPU here"),
])
def test_bad_run_arguments_stop_in_one_line_and_leave_nothing(tiny, tmp_path, extra, needle):
    """Nothing silently changed (`--iters 0` once ran the default 300), no traceback, no OUT.work/ left."""
    if torch.cuda.is_available() and extra[0] == "--device":
        pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    r = subprocess.run([*_finetune_cmd(tiny, out, 3), *extra], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and needle in lines[-1] and "Traceback" not in r.stderr, r.stderr
    assert not out.exists() and not Path(str(out) + ".work").exists()


def test_bad_settings_are_rejected_in_one_line():
    with pytest.raises(ValueError, match="unknown fine-tuning setting 'learning_rate'"):
        FinetuneConfig.from_dict({"learning_rate": 1})
    with pytest.raises(ValueError, match="unknown method 'sgd'"):
        FinetuneConfig.from_dict({"method": "sgd"})
    with pytest.raises(ValueError, match="unknown fine-tuning setting 'eam.steps'"):
        FinetuneConfig.from_dict({"eam": {"steps": 3}})


def test_time_to_threshold_interpolates_between_evaluations():
    curve = [{"eval_reward": 0.0, "wall_clock_s": 0.0}, {"eval_reward": 1.0, "wall_clock_s": 10.0},
             {"eval_reward": 3.0, "wall_clock_s": 20.0}]
    assert time_to(curve, 2.0, "wall_clock_s") == pytest.approx(15.0)
    assert time_to(curve, 4.0, "wall_clock_s") == float("inf")


def test_time_to_quality_of_known_curves(tmp_path):
    """AM gains 1.0 linearly over 100 s / 1000 NFEs, EAM reaches the same gain in 25 s / 100 NFEs:
    the threshold is 0.9, reached at 90 s vs 22.5 s (4×) and 900 vs 90 NFEs (10×); a seed whose EAM
    run never gets there is 'not reached' and left out of the mean."""
    from eam.report.finetune import _time_to_quality_figure, time_to_quality_table, time_to_threshold

    def run(method, seed, top, seconds, nfes):
        curve = [{"eval_reward": top * f, "wall_clock_s": seconds * f, "nfe_total": nfes * f} for f in (0, 0.5, 1)]
        return {"reward": "r", "lam": 10.0, "seed": seed, "method": method, "curve": curve}

    runs = [run("am", 0, 1.0, 100, 1000), run("eam", 0, 1.0, 25, 100),
            run("am", 1, 1.0, 100, 1000), run("eam", 1, 0.5, 25, 100)]
    rows = time_to_threshold(runs)
    assert rows[0]["threshold"] == pytest.approx(0.9)
    assert rows[0]["am_s"] == pytest.approx(90) and rows[0]["eam_s"] == pytest.approx(22.5)
    assert rows[0]["ratio_s"] == pytest.approx(4.0) and rows[0]["ratio_nfe"] == pytest.approx(10.0)
    assert math.isinf(rows[1]["eam_s"]) and math.isnan(rows[1]["ratio_s"])
    table = time_to_quality_table(rows)
    assert "| r | 10 | 1 | 0.9 | 90.0 | not reached |" in table
    assert "r, λ = 10: AM/EAM in wall-clock: 4.00 (1 pair: no interval) (of 2)." in table
    _time_to_quality_figure(rows, tmp_path / "ttq.png")
    assert (tmp_path / "ttq.png").read_bytes()[:4] == b"\x89PNG"
    # against the tilted law: p* = 2.5, the curves start at 0, so the threshold is 2.25 and AM (gain 1.0) never
    # gets there, while EAM (gain 2.5 over 25 s) crosses it at 22.5 s
    truth = {("r", 10.0): {"metrics": {"r": {"mean": 2.5, "se": 0.01}}, "base_metrics": {"r": {"mean": 0.5, "se": 0.01}}}}
    runs = [run("am", 0, 1.0, 100, 1000), run("eam", 0, 2.5, 25, 100)]
    (row,) = time_to_threshold(runs, truth=truth)
    assert row["threshold"] == pytest.approx(2.25) and row["target"] == "tilted law"
    assert math.isinf(row["am_s"]) and row["eam_s"] == pytest.approx(22.5)
    assert row["ratio_s_above"] == pytest.approx(100 / 22.5)  # AM's whole run over EAM's time: a lower bound
    assert "> 4.44 (AM not reached)" in time_to_quality_table([row])
    assert "90% of the gap between the base and the tilted law" in time_to_quality_table([row])


def test_ratio_interval_is_the_t_interval_over_seeds():
    """Ratios 3, 4, 5: mean 4, SE 1/√3, 95% t-interval 4 ± t(0.975, 2)·SE = 4 ± 4.303 · 0.577 = [1.52, 6.48]."""
    from eam.report.finetune import ratio_summary

    assert ratio_summary([3.0, 4.0, 5.0]) == "4.00 ± 0.58, 95% CI [1.52, 6.48] over 3 pairs"


def test_weights_of_another_model_are_a_one_line_error(tiny):
    with pytest.raises(MissingWeights, match="do not fit this model"):
        load_reward("digit_classifier", tiny / "heldout_classifier")
    with pytest.raises(MissingWeights, match="no weights folder given"):
        load_reward("digit_clip", None)


@pytest.mark.parametrize("method", ["am", "eam"])
def test_two_process_data_parallel_equals_one_process(tiny, tmp_path, method):
    """torchrun with 2 CPU processes (gloo), each computing one of the batch's 2 shards, gives the
    weights and the logged losses of one process computing both shards (same global batch)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    extra = {"shards": 2, "am": {"n_steps": 4, "n_last": 2, "n_random": 1}}
    one = tmp_path / "one"
    r = subprocess.run([a if a != "eam" else method for a in _finetune_cmd(tiny, one, 6, **extra)],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    two = tmp_path / "two"
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    cmd = [a if a != "eam" else method for a in _finetune_cmd(tiny, two, 6, launcher=launcher, **extra)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((two / "summary.json").read_text())["processes"] == 2
    rows1, rows2 = ([json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, two))
    assert [r["iter"] for r in rows2] == list(range(7))
    for a, b in zip(rows1[1:], rows2[1:]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["nfe_total"] == a["nfe_total"]
    m1, m2 = DigitsFlow.load(one), DigitsFlow.load(two)
    for (k, va), vb in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(vb, va, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
def test_bench_counts_floor_and_knobs(tiny, tmp_path):
    """`eam bench` on the tiny digits model: finite times, and NFEs per iteration equal to the method
    doc's cost model for the settings (AM: N forwards + N base VJPs + 1 reward VJP + |K| train rows;
    EAM (residual, the default): 2K Heun forwards + 1 model and 1 base forward at t' = 1 - δ + 1 reward VJP
    + M train rows, per sample); a knob runs
    only the methods its settings touch, with its own counts; every profiled phase is measured.
    No wall-clock relation is asserted: times are the benchmark's output, not a test's."""
    from eam.bench import bench

    settings = {"batch": 4, "am": {"n_steps": 6, "n_last": 2, "n_random": 2},
                "eam": {"ode_steps": 3, "ode_method": "heun", "n_times": 2}}
    knobs = {"K=2 Euler": {"eam.ode_steps": 2, "eam.ode_method": "euler"}, "batch 8": {"batch": 8},
             "CFG 2": {"guidance_scale": 2.0}}
    r = bench(settings, "digits_flow", tiny / "base", "digit_classifier", tiny / "digit_classifier",
              tiny / "prompts/train.jsonl", warmup=1, repeats=2, out=tmp_path, knobs=knobs, profile=True)
    am, eam = r["methods"]["am"], r["methods"]["eam"]
    assert am["nfe_per_iter"] == {"model_fwd": 24, "model_train": 16, "base_fwd": 0, "base_vjp": 24, "reward_vjp": 4}
    assert eam["nfe_per_iter"] == {"model_fwd": 28, "model_train": 8, "base_fwd": 4, "base_vjp": 0, "reward_vjp": 4}
    for v in (am, eam):
        w = v["wall_clock_s"]
        assert 0 < w["min"] <= w["median"] <= w["max"] and v["floor_s"] > 0 and math.isfinite(v["peak_memory_mb"])
        phases = v["phase_s"]
        assert set(phases) >= {"sample", "reward_vjp", "train"} and all(s > 0 for s in phases.values())
    units = r["unit_cost_s_per_nfe"]
    assert am["floor_s"] == pytest.approx(24 * units["forward"] + 24 * units["vjp"] + 4 * units["reward_vjp"]
                                          + 16 * units["train"])
    assert r["am_over_eam"]["nfe"] == pytest.approx(68 / 44)
    euler, b8, cfg2 = r["knobs"]
    assert set(euler["methods"]) == {"eam"} and euler["methods"]["eam"]["nfe_per_iter"]["model_fwd"] == 12
    assert set(b8["methods"]) == {"am", "eam"} and b8["methods"]["am"]["nfe_per_iter"]["base_vjp"] == 48
    # classifier-free guidance: 2 network rows per evaluation, the reward VJP once per sample; AM guides
    # only its sampled trajectory (am.guidance_in_adjoint: false, the official recipe)
    assert cfg2["methods"]["am"]["nfe_per_iter"] == {"model_fwd": 48, "model_train": 16, "base_fwd": 0,
                                                     "base_vjp": 24, "reward_vjp": 4}
    assert cfg2["methods"]["eam"]["nfe_per_iter"] == {"model_fwd": 56, "model_train": 16, "base_fwd": 8,
                                                      "base_vjp": 0, "reward_vjp": 4}
    assert all(math.isfinite(v["time_vs_baseline"]) and v["time_vs_baseline"] > 0
               for k in r["knobs"] for v in k["methods"].values())
    assert {"bench.json", "bench.md", "bench.png", "profile_am.txt", "profile_eam.txt"} <= {p.name for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match="unknown fine-tuning setting 'eam.odesteps'"):
        bench(settings, "digits_flow", tiny / "base", "digit_classifier", tiny / "digit_classifier",
              tiny / "prompts/train.jsonl", warmup=0, repeats=1, out=tmp_path, knobs={"typo": {"eam.odesteps": 2}})
