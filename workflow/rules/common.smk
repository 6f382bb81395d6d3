import shutil
from pathlib import Path

from snakemake.exceptions import WorkflowError

RESULTS = "results"


def check_files(paths, what):
    """Fail at parse time, in one line, when a configured input file is missing."""
    for p in paths:
        if not Path(p).is_file():
            raise WorkflowError(f"{what} {p} not found; add it or remove it from config/config.yaml")


onstart:
    # the slurm executor otherwise fails on its first submission with "No such file or directory: 'sacct'"
    plugin = workflow.executor_plugin
    if plugin is not None and plugin.name == "slurm" and not shutil.which("sbatch"):
        raise WorkflowError(
            "the slurm profile needs SLURM's commands (sbatch, squeue) on PATH and none are installed here; "
            "run `snakemake --cores N all` on this machine, or submit from a SLURM login node"
        )
