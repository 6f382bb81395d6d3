"""One config system: nested dataclasses from mappings (eam/config.py), numbers as YAML writes them, one-line
errors, and the workflow schema kept in step with the dataclasses and the method list."""
from pathlib import Path

import pytest
import yaml

from eam.bench_gmm import GMMTrainConfig
from eam.config import from_mapping
from eam.finetune import FinetuneConfig
from eam.losses import BASE_SCORES, EAMConfig
from eam.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())["properties"]


def test_yaml_exponents_are_numbers():
    """PyYAML reads `1e-4` and `1e3` (no dot) as strings; the settings take them as the numbers they are."""
    cfg = FinetuneConfig.from_dict(yaml.safe_load("lr: 1e-4\niters: 1e3\neam: {delta: 5e-2, ode_steps: 4.0}\n"))
    assert (cfg.lr, cfg.iters, cfg.eam.delta, cfg.eam.ode_steps) == (1e-4, 1000, 0.05, 4)
    assert type(cfg.iters) is int and type(cfg.eam.ode_steps) is int
    with pytest.raises(ValueError, match="fine-tuning setting iters must be an integer, got 2.5"):
        FinetuneConfig.from_dict({"iters": 2.5})


@pytest.mark.parametrize("section, data, message", [
    ("fine-tuning", {"eam": {"ode_steps": True}}, "fine-tuning setting eam.ode_steps must be an integer, got True"),
    ("fine-tuning", {"device": 3}, "fine-tuning setting device must be a string, got 3"),
    ("fine-tuning", {"eam": {"correction": 5}}, "fine-tuning setting eam.correction must be a string or null, got 5"),
    ("model", {"compile": "false"}, "model setting compile must be true or false, got 'false'"),
    ("model", {"lora": {"rank": "8.5"}}, "model setting lora.rank must be an integer, got 8.5"),
])
def test_every_field_takes_only_its_type(section, data, message):
    """A bool is not an integer, a string is not a switch: each field's type from its annotation, in one line."""
    from eam.adapters.diffusers_common import DiffusersOptions

    build = FinetuneConfig.from_dict if section == "fine-tuning" else DiffusersOptions.from_dict
    with pytest.raises(ValueError) as e:
        build(data)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_numbers_inside_lists_are_numbers_too():
    from eam.adapters.diffusers_common import DiffusersOptions

    assert DiffusersOptions.from_dict(yaml.safe_load("betas: [2e-3, 9e-3]")).betas == (0.002, 0.009)


@pytest.mark.parametrize("data, message", [
    ({"eam": {"steps": 3}}, "unknown fine-tuning setting 'eam.steps'; known in eam: ode_steps,"),
    ({"am": 3}, "fine-tuning setting am must be a mapping of settings, got 3"),
    ({"model": [1]}, "fine-tuning setting model must be a mapping of settings, got [1]"),
    ({"eam": {"delta": 1.5}}, "EAM delta must lie in (0, 1), got 1.5"),
])
def test_bad_settings_are_one_line(data, message):
    with pytest.raises(ValueError) as e:
        FinetuneConfig.from_dict(data)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_nested_sections_round_trip_and_keep_their_defaults():
    cfg = from_mapping(GMMTrainConfig, {"batch": 64, "eam": {"n_times": 3}}, "gmm")
    assert isinstance(cfg.eam, EAMConfig) and cfg.eam.n_times == 3 and cfg.batch == 64
    assert cfg.eam.ode_steps == EAMConfig().ode_steps and cfg.iters == GMMTrainConfig().iters
    from dataclasses import asdict

    assert from_mapping(GMMTrainConfig, asdict(cfg), "gmm") == cfg
    with pytest.raises(ValueError, match="gmm setting iters must be a positive integer, got 0"):
        from_mapping(GMMTrainConfig, {"iters": 0}, "gmm")


def test_the_workflow_schema_names_what_the_code_runs():
    """Every method and EAM variant the schema accepts is one the code has, and the other way round."""
    variants = [f"eam-{b}" for b in BASE_SCORES]
    assert SCHEMA["gmm"]["properties"]["variants"]["items"]["enum"] == ["am", *variants]
    assert SCHEMA["digits"]["properties"]["methods"]["items"]["enum"] == list(METHODS)
    assert SCHEMA["t2i"]["properties"]["methods"]["items"]["enum"] == list(METHODS)
    # digits ablations: every variant but `exact`, which needs an analytic base score (Gaussian mixtures only)
    assert SCHEMA["digits"]["properties"]["ablations"]["items"]["enum"] == [v for v in variants if v != "eam-exact"]


def test_the_schema_bounds_are_the_dataclasses_bounds():
    delta = SCHEMA["gmm"]["properties"]["delta"]
    assert (delta["exclusiveMinimum"], delta["exclusiveMaximum"]) == (0, 1)
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="delta"):
            EAMConfig(delta=bad)
    EAMConfig(delta=1e-3)
    assert SCHEMA["gmm"]["properties"]["iters"]["minimum"] == 1
    GMMTrainConfig(iters=1)
    with pytest.raises(ValueError, match="iters"):
        GMMTrainConfig(iters=0)


def test_every_shipped_settings_file_builds():
    """The fine-tuning settings the configs point at, and the bench's, are valid as they are."""
    files = [ROOT / "config/digits/finetune.yaml", *sorted((ROOT / "config").glob("*/*finetune*.yaml")),
             *sorted((ROOT / "config/bench").glob("*.yaml"))]
    for path in {f for f in files if "knobs" not in f.name}:
        FinetuneConfig.from_dict(yaml.safe_load(path.read_text()))
