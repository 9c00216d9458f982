"""The shape the code keeps: a pure core, one home per fact, small classes and functions.

These read the source (ast), so they fail the moment someone imports a clock
into the election or lets a class grow past what a newcomer can read.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from hapacs import checktypes, config
from hapacs.checks import probes

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hapacs"

# The core: decisions and data, time as an argument, no I/O.
PURE = ("wire", "election", "model", "effects", "states", "peertable", "masterwatch", "masterdown",
        "handover", "guard", "suspects", "timing", "heartbeat", "checktypes", "status", "checks/health",
        "buckets", "etcdwire", "leasegate")
# Standard modules a pure module may use: none of them touches a clock, a file or the network.
PURE_STDLIB = {"__future__", "enum", "dataclasses", "typing", "hashlib", "hmac", "struct", "math", "base64",
               "binascii", "json",
               "collections", "itertools", "functools", "ipaddress", "re"}
# What "reads a clock or does I/O" looks like as a call, should one slip in through a pure import.
IMPURE_CALLS = re.compile(r"\b(time\.(time|monotonic|sleep|perf_counter)|datetime\.now|open\(|print\(|"
                          r"random\.|os\.|socket\.)")
MAX_CLASS_LINES = 400
MAX_FUNCTION_LINES = 60


def module_path(name: str) -> Path:
    return PACKAGE / f"{name}.py"


def imports_of(path: Path, package: str = "hapacs") -> set[str]:
    """Absolute module names `path` imports at run time (not under `if TYPE_CHECKING:`),
    project modules as 'hapacs.x'; `package` is the one `path` belongs to."""
    tree = ast.parse(path.read_text())
    typing_only = {id(inner) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
                   for inner in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:
                    found |= {f"{module}.{alias.name}" for alias in node.names}
                else:
                    found.add(module)
            else:
                found.add(node.module)
    return found


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_import_no_io_and_read_no_clock(name):
    path = module_path(name)
    pure_modules = {"hapacs." + n.replace("/", ".") for n in PURE}
    offenders = []
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for module in sorted(imports_of(path, package)):
        if module.startswith("hapacs"):
            if module not in pure_modules and module != "hapacs":
                offenders.append(f"imports {module}, which is not one of the pure modules")
        elif module.split(".")[0] not in PURE_STDLIB:
            offenders.append(f"imports {module}")
    for number, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("#", 1)[0]
        if IMPURE_CALLS.search(code) and not code.strip().startswith(('"', "'")):
            offenders.append(f"line {number}: {line.strip()}")
    assert not offenders, f"hapacs/{name}.py must stay pure:\n" + "\n".join(offenders)


def test_the_purity_check_catches_a_clock(tmp_path):
    """The test above means something: a module that reads the clock is caught."""
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("import time\n\ndef now():\n    return time.monotonic()\n")
    assert "time" in imports_of(sneaky)
    assert IMPURE_CALLS.search("    return time.monotonic()")


def spans(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node, node.end_lineno - node.lineno + 1


def test_no_class_over_400_lines_and_no_function_over_60():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node, lines in spans(path):
            limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
            if lines > limit:
                too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines (at most {limit})")
    assert not too_long, "\n".join(too_long)


def test_every_check_type_has_a_reader_keys_and_a_probe():
    """checktypes.CHECK_TYPES is the one list: config reads from it, probes run each type."""
    assert set(probes.PROBES) == set(checktypes.CHECK_TYPES)
    assert config.CHECK_TYPES is checktypes.CHECK_TYPES
    assert set(checktypes.DICOM_CHECK_TYPES) == {"dicom-echo", "dicom-find"}
    reader = (PACKAGE / "config.py").read_text()
    for kind, spec in checktypes.CHECK_TYPES.items():
        for key in spec.keys:
            assert f'"{key}"' in reader, f"config.py never reads {key!r} of a {kind} check"


def test_the_readme_documents_every_check_type():
    readme = (ROOT / "README.md").read_text()
    missing = [kind for kind in checktypes.CHECK_TYPES if f"`{kind}`" not in readme]
    assert not missing, f"README lacks the check types {missing}"


def test_the_drain_default_and_the_timing_formulas_live_in_timing_only():
    """One home per fact: no other module restates the 30 s drain or Master_Down_Interval."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "timing.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\b30\.0\b|dead_after \* |\(256 - ", code):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
