"""The workstation: a DICOM user that keeps using the PACS through the VIP.

What it is for: measuring what a failover costs the people using the PACS.
Run inside the workstation namespace, it C-ECHOes the VIP every --interval
seconds (and with --store also C-STOREs small CT images back to back), each
attempt on a fresh association, and writes one JSON line per attempt:

    {"t": 12.301, "end": 12.309, "kind": "echo", "ok": true, "ms": 8.1, "err": ""}

t and end are time.monotonic(). CLOCK_MONOTONIC is shared by all network
namespaces, so the test process can compare them with its own timestamps
(lab.outage does the arithmetic).

It is bounded: it stops after --duration seconds or on SIGTERM/SIGINT, and a
failed attempt is never retried sooner than --interval. Each line is flushed
as written, so a reader sees attempts while the probe runs.

    python -m lab.probe --vip 192.0.2.100 --port 104 --called-ae PACS \\
        --interval 0.02 --duration 30 [--store] --out FILE
"""

import argparse
import json
import logging
import signal
import subprocess
import sys
import threading
import time

SUCCESS_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}  # success, and warnings that still stored it


class Recorder:
    """Writes one JSON line per attempt; shared by the echo and store threads."""

    def __init__(self, path):
        self._file = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, record: dict):
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file.closed:  # a straggling store after shutdown: nothing to keep
                return
            self._file.write(line)
            self._file.flush()  # readers poll the file while the probe runs

    def close(self):
        with self._lock:
            self._file.close()


def make_ct_dataset():
    """A tiny valid CT image (16x16, 16-bit) with fresh study/series/instance UIDs."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from pynetdicom.sop_class import CTImageStorage

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = "LAB^PROBE", "LAB0001"
    ds.Modality, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "CT", "1", 1, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = bytes(16 * 16 * 2)
    return ds


def _make_ae(calling_ae, timeout_s, context):
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(context)
    # connection_timeout matters most: without it a blackholed VIP blocks
    # associate() for minutes of kernel SYN retries.
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    return ae


def _associate(ae, args):
    """An established association, or (None, short reason)."""
    assoc = ae.associate(args.vip, args.port, ae_title=args.called_ae)
    if assoc.is_established:
        return assoc, ""
    if assoc.is_rejected:
        return None, "association rejected"
    return None, "no association (refused, timed out or aborted)"


def echo_once(ae, args):
    """Associate, C-ECHO, release. Returns (ok, err)."""
    assoc, err = _associate(ae, args)
    if assoc is None:
        return False, err
    status = assoc.send_c_echo()
    if assoc.is_established:
        assoc.release()
    if not status:  # empty Dataset: timeout or abort
        return False, "no C-ECHO response"
    if status.Status != 0x0000:
        return False, f"C-ECHO status 0x{status.Status:04X}"
    return True, ""


def store_once(ae, args):
    """Associate, C-STORE one new CT image, release. Returns (ok, err)."""
    assoc, err = _associate(ae, args)
    if assoc is None:
        return False, err
    status = assoc.send_c_store(make_ct_dataset())
    if assoc.is_established:
        assoc.release()
    if not status:
        return False, "no C-STORE response"
    if status.Status not in SUCCESS_STATUSES:
        return False, f"C-STORE status 0x{status.Status:04X}"
    return True, ""


def _attempt(kind, action, recorder):
    start = time.monotonic()
    try:
        ok, err = action()
    except Exception as error:  # a probe must record a failure, never die of it
        ok, err = False, f"{type(error).__name__}: {error}"[:120]
    end = time.monotonic()
    recorder.write({"t": start, "end": end, "kind": kind, "ok": ok,
                    "ms": round((end - start) * 1000, 3), "err": err})
    return ok


def run_loop(kind, action, recorder, interval_s, until, stop, paced=True):
    """Attempt `action` until monotonic time `until` or `stop` is set.

    paced: start attempts every interval_s (no catch-up burst after a slow
    one). Unpaced (stores): back to back, but a failure waits interval_s.
    """
    next_start = time.monotonic()
    while not stop.is_set() and time.monotonic() < until:
        delay = next_start - time.monotonic()
        if delay > 0 and stop.wait(min(delay, until - time.monotonic())):
            break
        if time.monotonic() >= until:
            break
        started = time.monotonic()
        ok = _attempt(kind, action, recorder)
        if paced:
            next_start = max(started + interval_s, time.monotonic())
        else:
            next_start = time.monotonic() + (0 if ok else interval_s)


def run_overlapping(action, recorder, interval_s, until, stop, overlap):
    """Start an echo every interval_s whether or not the previous ones have ended, at most
    `overlap` in flight (then the next start waits for a free slot).

    A workstation (or a room of them) does not wait for one stuck request before sending
    the next: the first echo started after a failover shows when service is back, and an
    echo stuck on a dead host only delays itself.
    """
    slots = threading.BoundedSemaphore(overlap)
    workers = []

    def one():
        try:
            _attempt("echo", action, recorder)
        finally:
            slots.release()

    next_start = time.monotonic()
    while not stop.is_set() and time.monotonic() < until:
        delay = next_start - time.monotonic()
        if delay > 0 and stop.wait(min(delay, max(0.0, until - time.monotonic()))):
            break
        if not slots.acquire(timeout=max(0.0, until - time.monotonic())):
            break
        worker = threading.Thread(target=one, name="echo", daemon=True)
        worker.start()
        workers = [w for w in workers if w.is_alive()] + [worker]
        next_start = max(next_start + interval_s, time.monotonic())
    return workers


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lab.probe",
                                     description="DICOM workstation probe (JSON lines).")
    parser.add_argument("--vip", required=True, help="address the workstation uses")
    parser.add_argument("--port", type=int, default=104)
    parser.add_argument("--called-ae", default="PACS")
    parser.add_argument("--calling-ae", default="PROBE")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between echoes")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds before stopping")
    parser.add_argument("--timeout", type=float, default=1.0,
                        help="connection, ACSE, DIMSE and network timeout in seconds")
    parser.add_argument("--store", action="store_true", help="also run a C-STORE loop")
    parser.add_argument("--overlap", type=int, default=1,
                        help="echoes in flight at once: 1 waits for each echo before the next; "
                             "more starts one every interval regardless (at most this many at a time)")
    parser.add_argument("--out", required=True, help="JSON-lines file (appended)")
    args = parser.parse_args(argv)
    if not (0 < args.interval <= 60 and 0 < args.duration <= 3600 and 0 < args.timeout <= 60
            and 1 <= args.overlap <= 200):
        parser.error("interval, duration, timeout and overlap must be positive and bounded")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # no per-association INFO lines
    from pynetdicom.sop_class import CTImageStorage, Verification

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    recorder = Recorder(args.out)
    until = time.monotonic() + args.duration
    threads = []
    if args.store:
        store_ae = _make_ae(args.calling_ae, args.timeout, CTImageStorage)
        threads.append(threading.Thread(
            target=run_loop, name="store",
            args=("store", lambda: store_once(store_ae, args), recorder, args.interval, until, stop),
            kwargs={"paced": False}, daemon=True))
    for thread in threads:
        thread.start()
    echo_ae = _make_ae(args.calling_ae, args.timeout, Verification)
    try:
        if args.overlap > 1:
            # One AE per echo: each runs in its own thread.
            threads += run_overlapping(
                lambda: echo_once(_make_ae(args.calling_ae, args.timeout, Verification), args),
                recorder, args.interval, until, stop, args.overlap)
        else:
            run_loop("echo", lambda: echo_once(echo_ae, args), recorder, args.interval, until, stop)
    finally:
        stop.set()
        for thread in threads:
            # One attempt can take about four timeouts (connect, ACSE, DIMSE, release).
            thread.join(4 * args.timeout + 1)
        recorder.close()
    return 0


def start_probe(lab, out, vip, port=104, called_ae="PACS", interval=0.02, duration=30.0,
                store=False, timeout=1.0, ns="ws", overlap=1):
    """Spawn the probe in the lab's workstation (or `ns`); the lab stops it at teardown.

    Its stderr goes to OUT.log, so a crash is readable.
    """
    argv = [sys.executable, "-m", "lab.probe", "--vip", vip, "--port", str(port),
            "--called-ae", called_ae, "--interval", str(interval), "--duration", str(duration),
            "--timeout", str(timeout), "--out", str(out), "--overlap", str(overlap)]
    if store:
        argv.append("--store")
    from lab.netns import REPO_ROOT, repo_pythonpath   # here: the probe itself runs without the lab
    pythonpath = repo_pythonpath()
    with open(f"{out}.log", "ab") as log:
        return lab.spawn(ns, argv, env={"PYTHONPATH": pythonpath}, cwd=str(REPO_ROOT),
                         stdout=log, stderr=subprocess.STDOUT)


if __name__ == "__main__":
    sys.exit(main())
