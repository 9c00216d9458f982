"""A PNG timeline of one failover trial per daemon, one panel each (matplotlib, Agg).

x is seconds from the fault. Each panel shows the workstation's C-ECHOes
and C-STOREs (green tick: answered, red cross: failed) and each node's state
as a coloured band. Input: the "timeline" dicts bench/trials.py keeps for
the trials chosen for the picture.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt             # noqa: E402
from matplotlib.patches import Patch        # noqa: E402

STATE_COLOURS = {"MASTER": "#2e8b57", "BACKUP": "#8fb4d9", "FAULT": "#d9534f", "INIT": "#dddddd",
                 "STOP": "#999999"}
ROWS = [("echo", "workstation\nC-ECHO"), ("store", "workstation\nC-STORE"), ("a", "pacs-a\n(prio 150)"),
        ("b", "pacs-b\n(prio 100)")]


def _state_segments(changes: list[dict], start: float, end: float):
    """[(from, to, state)] covering [start, end], from [{"t", "to"}] (INIT before the first)."""
    segments, state, since = [], "INIT", start
    for change in sorted(changes, key=lambda c: c["t"]):
        if change["t"] > start:
            segments.append((since, min(change["t"], end), state))
            since = min(change["t"], end)
        state = change["to"]
    segments.append((since, end, state))
    return [s for s in segments if s[1] > s[0]]


def _panel(axis, title: str, timeline: dict, x_end: float) -> None:
    x_start = -1.0
    y = {key: len(ROWS) - 1 - i for i, (key, _label) in enumerate(ROWS)}
    for kind in ("echo", "store"):
        ok = [r["t"] for r in timeline["probe"] if r["kind"] == kind and r["ok"] and r["t"] >= x_start]
        failed = [r["t"] for r in timeline["probe"] if r["kind"] == kind and not r["ok"] and r["t"] >= x_start]
        axis.scatter(ok, [y[kind]] * len(ok), marker="|", s=120, color="#2e8b57", linewidths=1)
        axis.scatter(failed, [y[kind]] * len(failed), marker="x", s=30, color="#d9534f", linewidths=1.2)
    for host in ("a", "b"):
        for begin, end, state in _state_segments(timeline["states"][host], x_start, x_end):
            axis.broken_barh([(begin, end - begin)], (y[host] - 0.3, 0.6),
                             facecolors=STATE_COLOURS.get(state, "#cccccc"))
    axis.axvline(0.0, color="black", linewidth=1)
    axis.text(0.02, len(ROWS) - 0.45, "fault", fontsize=8)
    if timeline.get("heal_t") is not None:
        heal = timeline["heal_t"] - timeline["fault_t"]
        axis.axvline(heal, color="black", linestyle="--", linewidth=1)
        axis.text(heal + 0.02, len(ROWS) - 0.45, "healed", fontsize=8)
    axis.set_yticks([y[key] for key, _ in ROWS], [label for _, label in ROWS], fontsize=8)
    axis.set_ylim(-0.6, len(ROWS) - 0.3)
    axis.set_xlim(x_start, x_end)
    axis.set_title(title, fontsize=10, loc="left")
    axis.grid(axis="x", alpha=0.3)


def draw(panels: list[tuple[str, dict]], path: str) -> None:
    """One panel per (title, timeline); saves a PNG at `path`."""
    x_end = max(p[1]["end_t"] - p[1]["fault_t"] for p in panels)
    figure, axes = plt.subplots(len(panels), 1, figsize=(10, 2.2 * len(panels) + 0.6), sharex=True, squeeze=False)
    for axis, (title, timeline) in zip(axes[:, 0], panels):
        _panel(axis, title, timeline, x_end)
    axes[-1, 0].set_xlabel("seconds from the fault")
    legend = [Patch(color=colour, label=state) for state, colour in STATE_COLOURS.items() if state != "STOP"]
    legend += [plt.Line2D([], [], color="#2e8b57", marker="|", linestyle="", markersize=10, label="answered"),
               plt.Line2D([], [], color="#d9534f", marker="x", linestyle="", label="failed")]
    figure.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(path, dpi=80)
    plt.close(figure)
