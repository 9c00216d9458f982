"""Hold N DICOM associations open from a namespace, as viewers do during long study transfers.

    python holdassociations.py HOST PORT N [CALLED_AE]

Opens N associations (Verification) one after another, prints
`established K of N` (or `failed ...`), then holds them. SIGUSR1: a
C-ECHO on every held association, printed as `echo OK of N`. SIGTERM:
releases them all and exits 0. Exits by itself after LIFETIME_S, so a
forgotten holder never lingers.
"""

import signal
import sys
import time

from pynetdicom import AE
from pynetdicom.sop_class import Verification

LIFETIME_S = 120.0
TIMEOUT_S = 5


def main() -> int:
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    called = sys.argv[4] if len(sys.argv) > 4 else "PACS"
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    held = []
    for _ in range(count):
        assoc = ae.associate(host, port, ae_title=called)
        if not assoc.is_established:
            print(f"failed after {len(held)} of {count}", flush=True)
            break
        held.append(assoc)
    print(f"established {len(held)} of {count}", flush=True)
    wanted = {"echo": 0, "stop": False}
    signal.signal(signal.SIGUSR1, lambda *_: wanted.__setitem__("echo", wanted["echo"] + 1))
    signal.signal(signal.SIGTERM, lambda *_: wanted.__setitem__("stop", True))
    deadline = time.monotonic() + LIFETIME_S
    while not wanted["stop"] and time.monotonic() < deadline:
        if wanted["echo"]:
            wanted["echo"] -= 1
            ok = sum(1 for assoc in held if assoc.is_established
                     and getattr(assoc.send_c_echo(), "Status", None) == 0x0000)
            print(f"echo {ok} of {len(held)}", flush=True)
        time.sleep(0.02)
    for assoc in held:
        if assoc.is_established:
            assoc.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
