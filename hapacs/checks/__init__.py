"""Health checks of the local PACS: probes, hysteresis, and the asyncio runner.

* `probes`: one blocking probe per check type, `run_probe(check) -> ProbeResult`.
  I/O only; never raises; each probe bounds itself by `check.timeout_s`.
* `health`: pure hysteresis (fall/rise), the probe schedule and the
  `Verdict` the election needs (fault, priority penalty, pending).
  No clock, no I/O: every call takes `now`.
* `runner`: `CheckRunner`, which runs the probes in worker threads on behalf
  of the agent's event loop and reports changes.

pynetdicom is imported only when a DICOM probe first runs.
"""

from hapacs.checks.health import Change, CheckHealth, Verdict, aggregate
from hapacs.checks.probes import ProbeResult, run_probe
from hapacs.checks.runner import CheckRunner

__all__ = ["Change", "CheckHealth", "CheckRunner", "ProbeResult", "Verdict", "aggregate", "run_probe"]
