"""The repository stands on its own: a clone alone in an empty directory has everything.

A new user clones hapacs into an empty folder and runs the README's test
command. Nothing may be looked up beside the clone (no `../something`), and
the MIB modules an NMS needs ship with the package.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MIB_FILES = sorted(p.name for p in (ROOT / "etc").glob("*.txt"))
# Words that would mean a file leans on something outside the repository: a sibling
# directory, or the team's own notes that never ship with the project.
OUTSIDE = re.compile(r"\.\./shared|\bLIBNOTES\b|\bCONTRACT\.md\b|\bSTYLE\.md\b")


def tracked_files() -> list[Path]:
    """The files a clone has (git's list, new files not yet committed included), else the tree
    minus build output."""
    if (ROOT / ".git").exists():
        listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], capture_output=True, check=True)
        return [ROOT / name for name in listed.stdout.decode().split("\0") if name]
    skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", "build", "dist"}
    return [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
            and not p.name.endswith(".egg-info")]


def copy_alone(destination: Path) -> Path:
    """A copy of the tracked files in `destination`/hapacs, with nothing beside it."""
    clone = destination / "hapacs"
    for source in tracked_files():
        if not source.exists():          # deleted in the work tree but not yet committed
            continue
        target = clone / source.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return clone


def test_no_file_refers_outside_the_repository():
    offenders = []
    for path in tracked_files():
        if not path.exists() or path == Path(__file__).resolve():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue                     # a picture, not text
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "files that refer outside the repository:\n" + "\n".join(offenders)


def test_the_ietf_mib_modules_are_in_the_repository():
    """Everything HAPACS-MIB and VRRPV3-MIB import, down to SNMPv2-SMI, with a note of origin."""
    for module in ("HAPACS-MIB", "VRRPV3-MIB", "SNMPv2-SMI", "SNMPv2-TC", "SNMPv2-CONF", "SNMPv2-MIB",
                   "INET-ADDRESS-MIB", "IF-MIB", "IANAifType-MIB", "SNMP-FRAMEWORK-MIB"):
        text = (ROOT / "etc" / f"{module}.txt").read_text()
        assert re.search(rf"^\s*{re.escape(module)}\s+DEFINITIONS\s*::=\s*BEGIN", text, re.M), module
        assert f"`{module}.txt`" in (ROOT / "etc" / "MIB-SOURCES.md").read_text(), module


def test_readme_commands_need_no_sudo():
    """A minimal Debian where you are root has no sudo: the README's commands must not start with it."""
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```sh\n(.*?)```", readme, re.S)
    assert commands
    assert not [line for block in commands for line in block.splitlines() if line.lstrip().startswith("sudo ")]


@pytest.mark.root
def test_snmp_and_mib_tests_pass_from_a_copy_alone(tmp_path):
    """The SNMP and MIB tests, run inside a copy of the repository in an empty directory, pass
    and skip nothing: they find every MIB module in the copy itself."""
    if os.geteuid() != 0:
        pytest.fail("the SNMP agent tests need root (they run snmptrapd and bind ports); run as root",
                    pytrace=False)
    clone = copy_alone(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["hapacs"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
         "tests/test_mib.py", "tests/test_snmp_agent.py"],
        cwd=clone, env={**os.environ, "PYTHONPATH": str(clone)},
        capture_output=True, text=True, timeout=400)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, summary
    # The copy really was the one tested, not the original.
    assert str(ROOT) not in run.stdout


def test_the_package_ships_the_mib_modules(tmp_path):
    """`pip install` puts HAPACS-MIB and the IETF modules in share/hapacs/mibs (README, "SNMP")."""
    clone = copy_alone(tmp_path)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "wheel"), str(clone)],
        capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "wheel").glob("hapacs-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        shipped = {Path(name).name: archive.read(name) for name in archive.namelist()
                   if "/data/share/hapacs/mibs/" in name}
    assert sorted(shipped) == sorted(MIB_FILES + ["MIB-SOURCES.md"])
    for name in MIB_FILES:
        assert shipped[name] == (ROOT / "etc" / name).read_bytes(), name
