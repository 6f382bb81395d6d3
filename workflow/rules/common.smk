import shutil
from pathlib import Path

from snakemake.exceptions import WorkflowError

RESULTS = "results"


def check_files(paths, what):
    """Fail at parse time, in one line, when a configured input file is missing."""
    for p in paths:
        if not Path(p).is_file():
            raise WorkflowError(f"{what} {p} not found; add it or remove it from config/config.yaml")


def _settings(path):
    import yaml

    with open(path) as f:
        return yaml.safe_load(f) or {}


def settings_eam(path):
    """The EAM settings (eam.losses.EAMConfig) a fine-tuning settings file gives, defaults filled in."""
    from eam.losses import EAMConfig

    return EAMConfig(**(_settings(path).get("eam") or {}))


CORRECTION_FIT = 3  # `corrected`: its correction network is fitted 3x as long as a run (docs/method.md §5.5)


def correction_fit_args(path):
    """The correction fit's length: CORRECTION_FIT times the settings' NFE budget (or iterations)."""
    from eam.finetune import FinetuneConfig

    cfg = FinetuneConfig.from_dict({k: v for k, v in _settings(path).items()})
    if cfg.budget_nfe is not None:
        return f"--set budget_nfe={CORRECTION_FIT * int(cfg.budget_nfe)}"
    return f"--iters {CORRECTION_FIT * cfg.iters}"


onstart:
    # the slurm executor otherwise fails on its first submission with "No such file or directory: 'sacct'"
    plugin = workflow.executor_plugin
    if plugin is not None and plugin.name == "slurm" and not shutil.which("sbatch"):
        raise WorkflowError(
            "the slurm profile needs SLURM's commands (sbatch, squeue) on PATH and none are installed here; "
            "run `snakemake --cores N all` on this machine, or submit from a SLURM login node"
        )
