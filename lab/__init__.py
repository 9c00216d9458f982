"""Test lab for hapacs: namespaces, real DICOM servers, a workstation probe.

Not part of the installed hapacs package. Tests, benchmarks and demos import
it with the repository root on sys.path. Everything here needs root.
"""

from lab.netns import Lab, LabCommandError, Node, cleanup_stale, in_namespace, unique_prefix, wait_for

__all__ = ["Lab", "LabCommandError", "Node", "cleanup_stale", "in_namespace", "unique_prefix", "wait_for"]
