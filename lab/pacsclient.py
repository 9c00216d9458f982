"""A DICOM user of the lab's PACS: C-ECHO, C-STORE, C-FIND and C-MOVE with pynetdicom.

What it is for: tests of a PACS cluster act as a workstation does, from the
workstation's namespace (the test process sits in the root namespace, which
has no route to the lab). lab.pacs.scu runs it there; it prints one JSON object
on stdout and exits 0 when the operation succeeded, 1 when it did not.

    python -m lab.pacsclient HOST PORT CALLED_AE echo
    python -m lab.pacsclient HOST PORT CALLED_AE store [--count N]
    python -m lab.pacsclient HOST PORT CALLED_AE find [--study UID]
    python -m lab.pacsclient HOST PORT CALLED_AE move --study UID --destination AE

Every network wait is bounded by --timeout (connect, ACSE, DIMSE, network).
"""

import argparse
import json
import logging
import sys

from lab.probe import SUCCESS_STATUSES, make_ct_dataset

MAX_COUNT = 100
PENDING = {0xFF00, 0xFF01}


def _associate(args, contexts):
    from pynetdicom import AE

    ae = AE(ae_title=args.calling_ae)
    for context in contexts:
        ae.add_requested_context(context)
    # connection_timeout matters most: without it a blackholed peer blocks
    # associate() for minutes of kernel SYN retries.
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = args.timeout
    assoc = ae.associate(args.host, args.port, ae_title=args.called_ae)
    if assoc.is_established:
        return assoc, ""
    return None, "association rejected" if assoc.is_rejected else "no association (refused, timed out or aborted)"


def _release(assoc):
    if assoc.is_established:
        assoc.release()


def echo(args) -> dict:
    from pynetdicom.sop_class import Verification

    assoc, err = _associate(args, [Verification])
    if assoc is None:
        return {"ok": False, "err": err}
    status = assoc.send_c_echo()
    _release(assoc)
    ok = bool(status) and status.Status == 0x0000
    return {"ok": ok, "err": "" if ok else "no C-ECHO success"}


def store(args) -> dict:
    """C-STORE --count CT images of one new study; return its StudyInstanceUID and SOP instance UIDs."""
    from pydicom.uid import generate_uid
    from pynetdicom.sop_class import CTImageStorage

    assoc, err = _associate(args, [CTImageStorage])
    if assoc is None:
        return {"ok": False, "err": err}
    first = make_ct_dataset()
    study, series, instances = first.StudyInstanceUID, first.SeriesInstanceUID, []
    try:
        for number in range(1, args.count + 1):
            dataset = first if number == 1 else make_ct_dataset()
            dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
            if number > 1:
                dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            dataset.InstanceNumber = number
            status = assoc.send_c_store(dataset)
            if not status or status.Status not in SUCCESS_STATUSES:
                code = f"0x{status.Status:04X}" if status else "none"
                return {"ok": False, "err": f"C-STORE {number} status {code}", "study": study,
                        "instances": instances}
            instances.append(str(dataset.SOPInstanceUID))
    finally:
        _release(assoc)
    return {"ok": True, "err": "", "study": str(study), "instances": instances}


def _study_identifier(study_uid):
    from pydicom.dataset import Dataset

    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid or ""
    return identifier


def find(args) -> dict:
    """Study-level C-FIND (all studies, or --study); return the StudyInstanceUIDs matched."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    assoc, err = _associate(args, [FIND])
    if assoc is None:
        return {"ok": False, "err": err}
    identifier = _study_identifier(args.study)
    identifier.PatientName = ""
    studies, final = [], None
    try:
        for status, match in assoc.send_c_find(identifier, FIND):
            if not status:
                return {"ok": False, "err": "no C-FIND response", "studies": studies}
            if status.Status in PENDING and match is not None:
                studies.append(str(match.StudyInstanceUID))
            else:
                final = status.Status
    finally:
        _release(assoc)
    ok = final == 0x0000
    return {"ok": ok, "err": "" if ok else f"C-FIND final status {final}", "studies": studies}


def move(args) -> dict:
    """Study-level C-MOVE of --study to --destination; return the sub-operation counts."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

    if not args.study or not args.destination:
        return {"ok": False, "err": "move needs --study and --destination"}
    assoc, err = _associate(args, [MOVE])
    if assoc is None:
        return {"ok": False, "err": err}
    final = None
    try:
        for status, _identifier in assoc.send_c_move(_study_identifier(args.study), args.destination, MOVE):
            if not status:
                return {"ok": False, "err": "no C-MOVE response"}
            final = status
    finally:
        _release(assoc)
    counts = {name: int(getattr(final, f"NumberOf{name.capitalize()}Suboperations", 0) or 0)
              for name in ("completed", "failed", "warning")}
    ok = final.Status == 0x0000 and counts["failed"] == 0
    return {"ok": ok, "err": "" if ok else f"C-MOVE final status 0x{final.Status:04X}", **counts}


OPERATIONS = {"echo": echo, "store": store, "find": find, "move": move}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lab.pacsclient", description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("called_ae")
    parser.add_argument("operation", choices=sorted(OPERATIONS))
    parser.add_argument("--calling-ae", default="WS")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds for each network wait")
    parser.add_argument("--count", type=int, default=1, help="store: images in the new study")
    parser.add_argument("--study", default="", help="find/move: StudyInstanceUID")
    parser.add_argument("--destination", default="", help="move: the destination's AE title")
    args = parser.parse_args(argv)
    if not (0 < args.timeout <= 60 and 1 <= args.count <= MAX_COUNT and 0 < args.port < 65536):
        parser.error(f"timeout must be in (0, 60], count in [1, {MAX_COUNT}], port in [1, 65535]")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # the JSON says what failed
    try:
        result = OPERATIONS[args.operation](args)
    except Exception as error:  # report, never a traceback instead of the JSON line
        result = {"ok": False, "err": f"{type(error).__name__}: {error}"[:200]}
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
