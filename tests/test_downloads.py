"""The download commands the README and the missing-weights errors tell users to run exist in this
environment and accept the options they are given with; environment.yml pins what pyproject.toml pins."""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _named_commands() -> list[tuple[str, str]]:
    """(where, command) for every backticked `hf …` command in the README and in eam/."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "eam").rglob("*.py"))]:
        for cmd in re.findall(r"`((?:hf|huggingface-cli) [^`]+)`", path.read_text()):
            found.append((str(path.relative_to(ROOT)), cmd))
    return found


def test_every_named_download_command_exists_with_its_options():
    commands = _named_commands()
    assert len(commands) >= 15, commands  # the README table and the reward/model errors
    bindir = str(Path(sys.executable).parent)
    helps: dict[tuple[str, str], str] = {}
    for where, cmd in commands:
        argv = shlex.split(cmd.replace("{", "").replace("}", ""))
        exe = shutil.which(argv[0], path=bindir + ":" + os.environ.get("PATH", ""))
        assert exe, f"{where}: `{argv[0]}` (from `{cmd}`) is not installed in this environment"
        key = (argv[0], argv[1])
        if key not in helps:
            res = subprocess.run([exe, argv[1], "--help"], capture_output=True, text=True, timeout=120)
            assert res.returncode == 0, f"{where}: `{argv[0]} {argv[1]} --help` failed: {res.stderr[-300:]}"
            helps[key] = res.stdout
        for opt in (a.split("=")[0] for a in argv[2:] if a.startswith("--")):
            assert opt in helps[key], f"{where}: `{argv[0]} {argv[1]}` has no option {opt} (from `{cmd}`)"


def _pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.match(r"\s*-?\s*\"?([A-Za-z0-9_.-]+)==([^\",\s]+)", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_environment_yml_pins_what_pyproject_pins():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _pins(project["dependencies"] + project["optional-dependencies"]["test"])
    conda = _pins((ROOT / "environment.yml").read_text().splitlines())
    assert wanted == conda
