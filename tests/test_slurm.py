"""The embedded-default DAG through profiles/slurm on a real single-node SLURM (tests/slurm/run.sh).
It installs Debian's SLURM and writes /etc/slurm/slurm.conf, so it runs only where CI=true (or
EAM_SLURM_TEST=1) as root; the job ids SLURM assigned are printed in pytest's terminal summary."""
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "slurm" / "run.sh"
ENABLED = (os.environ.get("CI") == "true" or os.environ.get("EAM_SLURM_TEST") == "1") and os.geteuid() == 0


@pytest.mark.slow(minutes=6)
@pytest.mark.skipif(not ENABLED, reason="changes the machine's SLURM setup: set EAM_SLURM_TEST=1 (root) to run it")
def test_dag_runs_as_slurm_jobs(record_property):
    p = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=2400)
    # printed in the terminal summary by conftest.py (also under pytest-xdist, which hides test output)
    record_property("log", [line for line in p.stdout.splitlines() if line.startswith("slurm-test:")])
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert "SLURM job ids:" in p.stdout and "passed:" in p.stdout
