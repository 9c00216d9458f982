"""Small helpers the benchmarks share: the root check, the load average, the 95th percentile, the JSON file.

Each benchmark inserts the repository's root into sys.path and imports this
as `bench.common`. Nothing here starts a process or touches the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def not_root(script: str) -> bool:
    """True (after saying so on stderr) when this process is not root; `script` is the bench's path."""
    if os.geteuid() == 0:
        return False
    print(f"{script}: run as root", file=sys.stderr)
    return True


def load_average() -> str:
    """The 1, 5 and 15 minute load averages as "1.2/0.8/0.5": the machine's load beside a figure."""
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def p95(values: list[float]) -> float:
    """The 95th percentile, nearest rank of the sorted values."""
    values = sorted(values)
    return values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]


def write_json(path: str | None, value) -> None:
    """Write the results to `path` (indented), if the caller was given one (--json)."""
    if path:
        with open(path, "w") as handle:
            json.dump(value, handle, indent=1)


def exit_with(main) -> None:
    """sys.exit(main()); a lab command that failed (CalledProcessError) is printed and exits 1,
    without a traceback."""
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as error:
        print(error, file=sys.stderr)
        sys.exit(1)
