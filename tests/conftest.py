"""Shared test setup: one CPU thread, float64 where it matters, and a fixed seed per test; a test's
`log` property (record_property) is printed in the terminal summary. Two tiers: locally the fast one
(minute-long `slow` tests deselected); with `--slow`, or where CI=true, the full one."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)
SEED = 1234


@pytest.fixture(autouse=True)
def _fixed_seed():
    """Every test starts from the same global RNG state (torch and numpy)."""
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    yield


@pytest.fixture
def gen():
    """A seeded torch.Generator for explicit sampling."""
    return torch.Generator().manual_seed(SEED)


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true",
                     help="also run the minute-long `slow` tests (the full tier; CI=true implies it)")


def _tier(config) -> str:
    """full: --slow or CI=true; chosen: a -m expression other than the default, or test ids named on the
    command line (the user's selection decides, slow or not); fast otherwise."""
    if config.getoption("--slow") or os.environ.get("CI") == "true":
        return "full"
    if (config.getoption("-m") or "") not in ("", "not known_gap") or any("::" in a for a in config.args):
        return "chosen"
    return "fast"


def pytest_report_header(config):
    return {"full": "tier: full (slow tests included)",
            "chosen": "tier: as selected by -m or test ids (slow tests not dropped)",
            "fast": "tier: fast (slow tests deselected; --slow or CI=true runs the full tier)"}[_tier(config)]


def _minutes(item) -> float:
    """A slow test's measured minutes: the largest `slow(minutes=...)` among its marks (a parameter's own
    mark can be longer than its function's)."""
    return max((m.kwargs.get("minutes", 1) for m in item.iter_markers("slow")), default=0)


def pytest_collection_modifyitems(config, items):
    """The fast tier drops the `slow` tests. Then minute-long tests first, longest first (`slow(minutes=...)`, measured on 2 cores). With
    `--dist loadgroup` (the README's test command) each test is its own unit and a worker takes the next one
    when it is free, so the long ones spread over the workers instead of one of them ending the run alone."""
    def order(item):
        return (item.get_closest_marker("slow") is None, -_minutes(item))

    if _tier(config) == "fast":
        slow = [item for item in items if item.get_closest_marker("slow")]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [item for item in items if not item.get_closest_marker("slow")]
    items.sort(key=order)


_LOGS = []


def pytest_runtest_logreport(report):
    """Collect `log` properties on the controlling process (pytest-xdist forwards user_properties)."""
    if report.when == "call":
        _LOGS.extend((report.nodeid, line) for key, lines in report.user_properties if key == "log" for line in lines)


def pytest_terminal_summary(terminalreporter):
    if _LOGS:
        terminalreporter.section("test logs")
        for nodeid, line in _LOGS:
            terminalreporter.write_line(f"{nodeid}: {line}")
