"""What every test shares: the repository on the agents' PYTHONPATH, and the markers.

Markers (declared in pyproject.toml):
- `netns`: builds network namespaces (needs root). Every test that uses a `lab` or
  `net` fixture gets it automatically.
- `root`: needs root for something else (users, groups, systemd tools).

    .venv/bin/python -m pytest -m "not netns and not root"   # the pure tests, as any user, in seconds
    .venv/bin/python -m pytest -m netns                       # everything that builds namespaces
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = str(Path(__file__).resolve().parent.parent)
LAB_FIXTURES = ("lab", "net")
ROOT_FIXTURES = ("control_group",)   # creates a system group


@pytest.fixture(autouse=True, scope="session")
def repository_on_pythonpath():
    """Agents, daemons and helpers that tests start run this repository's code."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, before]))
    yield
    if before is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = before


@pytest.fixture
def key(tmp_path) -> str:
    """A valid cluster key file (mode 0600) for configs written by tests."""
    path = tmp_path / "cluster.key"
    path.write_text("0123456789abcdef0123456789abcdef\n")
    path.chmod(0o600)
    return str(path)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(name in LAB_FIXTURES for name in item.fixturenames):
            item.add_marker(pytest.mark.netns)
        if any(name in ROOT_FIXTURES for name in item.fixturenames):
            item.add_marker(pytest.mark.root)
