"""The check types: one registry that config, probes, drain ports and docs tests read. Pure.

Adding a check type means one entry here, a reader branch in config.py and
a probe in checks/probes.py; tests/test_structure.py checks that all three agree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CheckType:
    keys: tuple[str, ...]     # the keys of its own, beside the common ones
    dicom: bool = False       # speaks DICOM: its port is a DICOM port to drain


COMMON_KEYS = ("name", "type", "interval", "timeout", "fall", "rise", "weight")

CHECK_TYPES: dict[str, CheckType] = {
    "dicom-echo": CheckType(("host", "port", "called_ae", "calling_ae"), dicom=True),
    "dicom-find": CheckType(("host", "port", "called_ae", "calling_ae", "query_level"), dicom=True),
    "tcp": CheckType(("host", "port")),
    "http": CheckType(("url", "status")),
    "process": CheckType(("process_name", "pidfile")),
    "disk": CheckType(("path", "min_free_percent")),
    "script": CheckType(("command",)),
}

DICOM_CHECK_TYPES = tuple(name for name, kind in CHECK_TYPES.items() if kind.dicom)
