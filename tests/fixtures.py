"""Fixture factories and small helpers the test modules share."""

from __future__ import annotations

import asyncio

from typing import Callable

import pytest

from hapacs import config as cfg
from lab import Lab, unique_prefix


def lab_fixture(tag: str, *, before: Callable[[], None] | None = None, scope: str = "function",
                name: str = "lab", **lab_kwargs):
    """A `lab` fixture for one test module: a fresh Lab (namespaces named `tag` + pid + counter),
    removed with every process it started when the test ends, even on failure. `before` runs
    first, e.g. to fail clearly when a tool is missing. `name` is the fixture's name (tests/conftest.py
    marks tests using "lab" or "net" as building namespaces); `lab_kwargs` go to Lab."""
    @pytest.fixture(name=name, scope=scope)
    def lab():
        if before is not None:
            before()
        with Lab(unique_prefix(tag), **lab_kwargs) as built:
            yield built
    return lab


def load_config(tmp_path, text: str, name: str = "hapacs.yaml") -> cfg.Config:
    """The configuration `text`, written to tmp_path/`name` and loaded as the agent loads its file."""
    path = tmp_path / name
    path.write_text(text)
    return cfg.load(str(path))


def config_problems(tmp_path, text: str, name: str = "hapacs.yaml") -> list[str]:
    """The problems of the configuration `text` (it must have some), written to tmp_path/`name`, each as
    `file:line: key.path: message`."""
    with pytest.raises(cfg.ConfigError) as caught:
        load_config(tmp_path, text, name)
    return [str(p) for p in caught.value.problems]


def drain_command(agent, on: bool = True) -> dict:
    """`hapacs drain on|off` through the commands' public entry, as the control socket calls it."""
    from hapacs.commands import Commands

    async def no_progress(wait_s: float) -> None:
        return None

    return asyncio.run(Commands(agent).handle({"command": "drain", "on": on}, no_progress))
