from pathlib import Path

from snakemake.exceptions import WorkflowError

RESULTS = "results"


def check_files(paths, what):
    """Fail at parse time, in one line, when a configured input file is missing."""
    for p in paths:
        if not Path(p).is_file():
            raise WorkflowError(f"{what} {p} not found; add it or remove it from config/config.yaml")
