"""`eam gmm` honours its RESULT.json contract and `eam gmm-report` turns results into figures and a table."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from eam.cli import main

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "config" / "gmm" / "mix2d_linear.yaml"
KEYS = {"sliced_w2", "sliced_w2_floor", "sliced_w2_base", "reward_mean", "reward_mean_exact", "wall_clock_s",
        "iters", "nfe", "curve"}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("gmm")
    paths = []
    for method, extra in [("am", []), ("eam", ["--base-score", "endpoint", "--delta", "0.05"])]:
        path = out / f"{method}.json"
        main(["gmm", "--case", str(CASE), "--method", method, *extra, "--iters", "4", "--seed", "1",
              "--out", str(path), "--quiet"])
        paths.append(path)
    return paths


def test_result_contract(results):
    for path in results:
        res = json.loads(path.read_text())
        assert KEYS <= set(res)
        assert res["iters"] == 4 and res["curve"][-1]["iter"] == 4
        assert set(res["curve"][0]) == {"iter", "wall_clock_s", "nfe_total", "sliced_w2", "reward_mean"}
        assert 0 < res["sliced_w2_floor"] < res["sliced_w2_base"]
        assert res["nfe"]["reward_vjp"] == 4 * res["batch"]  # one reward VJP per sample per iteration, both methods


def test_nfe_counts_follow_the_cost_model(results):
    """AM: N sampling forwards + N base VJPs + |K| train steps per sample; EAM: K (×2 for Heun) sampling
    forwards + 1 reward VJP + 1 base NFE (endpoint) + M train steps."""
    am, eam = (json.loads(p.read_text()) for p in results)
    a, e = am["config"]["am"], eam["config"]["eam"]
    per_sample = {k: v / (4 * am["batch"]) for k, v in am["nfe"].items()}
    assert per_sample == {"model_fwd": a["n_steps"], "model_train": a["n_last"] + a["n_random"],
                          "base_fwd": 0, "base_vjp": a["n_steps"], "reward_vjp": 1}
    sampling = e["ode_steps"] * (2 if e["ode_method"] == "heun" else 1)
    per_sample = {k: v / (4 * eam["batch"]) for k, v in eam["nfe"].items()}
    assert per_sample == {"model_fwd": sampling, "model_train": e["n_times"], "base_fwd": 1,
                          "base_vjp": 0, "reward_vjp": 1}
    assert am["curve"][-1]["nfe_total"] == sum(am["nfe"].values())


def test_report_writes_figures_and_table(results, tmp_path):
    main(["gmm-report", *map(str, results), "--out", str(tmp_path)])
    png = tmp_path / "mix2d_linear.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    table = (tmp_path / "table.md").read_text()
    assert "| mix2d_linear | am |" in table and "eam-endpoint (δ=0.05)" in table


def test_bad_arguments_are_one_line_errors(tmp_path):
    cmd = [sys.executable, "-m", "eam.cli", "gmm", "--case", str(CASE), "--method", "am", "--delta", "0.1",
           "--out", str(tmp_path / "x.json")]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "--delta" in p.stderr
    assert not (tmp_path / "x.json").exists()


def test_set_overrides_a_training_setting(tmp_path):
    path = tmp_path / "r.json"
    main(["gmm", "--case", str(CASE), "--method", "eam", "--iters", "2", "--set", "eam.n_times=3", "--set", "batch=64",
          "--out", str(path), "--quiet"])
    res = json.loads(path.read_text())
    assert res["config"]["eam"]["n_times"] == 3 and res["batch"] == 64
    assert res["nfe"]["model_train"] == 2 * 64 * 3  # iterations × batch × loss times
    assert sum(res["component_weights"]) == pytest.approx(1.0) and len(res["component_weights_exact"]) == 4
    cmd = [sys.executable, "-m", "eam.cli", "gmm", "--case", str(CASE), "--method", "eam", "--set", "eam.steps=3",
           "--out", str(tmp_path / "x.json")]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "eam.steps" in p.stderr


def test_every_subcommand_and_flag_has_help():
    """`eam CMD --help` starts with a description and documents every flag (with its default)."""
    import argparse

    from eam.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert len(sub.choices) >= 11
    for name, parser in sub.choices.items():
        assert parser.description, name
        assert parser.formatter_class is argparse.ArgumentDefaultsHelpFormatter, name
        undocumented = [a.dest for a in parser._actions if not a.help]
        assert not undocumented, (name, undocumented)


def test_set_reads_numbers_as_numbers():
    """`--set lr=1e-4`: PyYAML reads 1e-4 (no dot) as a string; --set gives the number."""
    from eam import config

    settings = {"eam": {"ode_steps": 8}}
    for spec in ("lr=1e-4", "eam.sampler=base", "eam.ode_steps=4", "grad_clip=null", "model.lora.rank=8"):
        config.apply(settings, *config.parse(spec))
    assert settings == {"lr": 1e-4, "eam": {"ode_steps": 4, "sampler": "base"}, "grad_clip": None,
                        "model": {"lora": {"rank": 8}}}
