"""deploy/: the systemd units are valid for systemd itself, and every command they start exists."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import ROOT, manage

DEPLOY = ROOT / "deploy"
INSTANCES = {
    "reapi-serve@.service": "reapi-serve@external.service",
    "reapi-worker@.service": "reapi-worker@external-x86-64.service",
}


def units() -> list[Path]:
    found = sorted(DEPLOY.glob("*.service"))
    assert {p.name for p in found} >= {
        "reapi-portal.service",
        "reapi-serve@.service",
        "reapi-worker@.service",
        "reapi-maintenance.service",
    }
    return found


@pytest.fixture
def installed(tmp_path: Path) -> list[Path]:
    """The units as installed from this checkout (paths under /opt/reapi pointing here)."""
    if shutil.which("systemd-analyze") is None:
        raise RuntimeError("systemd-analyze is missing: `make test-deps` installs Debian's systemd")
    out = []
    for unit in units():
        text = unit.read_text().replace("/opt/reapi/.venv/bin/python", sys.executable)
        text = text.replace("/opt/reapi", str(ROOT))
        target = tmp_path / unit.name
        target.write_text(text)
        # A template is verified through one of its instances.
        out.append(tmp_path / INSTANCES.get(unit.name, unit.name))
    return out


def test_systemd_analyze_verifies_every_unit_without_a_warning(installed: list[Path]) -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, installed)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


def exec_lines() -> list[list[str]]:
    lines = []
    for unit in units():
        for line in unit.read_text().splitlines():
            if re.match(r"ExecStart(Pre)?=", line):
                lines.append(shlex.split(line.split("=", 1)[1]))
    return lines


def test_every_command_the_units_start_exists() -> None:
    commands = exec_lines()
    assert len(commands) >= 6
    for argv in commands:
        assert argv[0] == "/opt/reapi/.venv/bin/python", argv
        if argv[1] == "-m":
            assert argv[2:4] == ["gunicorn", "portal.wsgi:application"], argv
            done = subprocess.run(
                [sys.executable, "-c", "import gunicorn, portal.wsgi"],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, done.stderr
            continue
        assert argv[1] == "/opt/reapi/manage.py", argv
        # The command and its sub-commands: the words before the first option.
        first_option = next((i for i, a in enumerate(argv) if a.startswith("--")), len(argv))
        words = argv[2:first_option]
        helped = manage(*words, "--help", check=False)
        assert helped.returncode == 0, (argv, helped.stderr)
        # Every option the unit passes is one the command takes.
        for option in (a for a in argv[3:] if a.startswith("--")):
            assert option.split("=", 1)[0] in helped.stdout, (argv, option)


def test_every_variable_the_units_expand_is_in_an_example_env_file() -> None:
    examples = "\n".join(p.read_text() for p in DEPLOY.glob("*.env.example"))
    defined = set(re.findall(r"^([A-Z_]+)=", examples, re.M))
    for unit in units():
        for name in re.findall(r"\$\{([A-Z_]+)\}", unit.read_text()):
            assert name in defined, (unit.name, name)
