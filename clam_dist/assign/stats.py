"""Per-stage seconds of an assignment, read from Ray Data's stats text.

Ray Data runs read, assign and write as operators (the assignment pipeline lets it fuse
them into one task per row range), so one wall-clock lap cannot split them; its stats
name each operator with the span it was active ("... in 4.31s") and the seconds its
tasks ran ("Remote wall time: ... total"). Both are kept: spans of separate operators
overlap (they sum to more than the job), task seconds show where the CPUs went.
"""

from __future__ import annotations

import re

# operator name fragment -> stage
_STAGES = (("_read_units", "read"), ("assign_batch", "compute"), ("Write", "write"))
_OPERATOR = re.compile(r"^Operator \d+ (?P<name>.+?): .* in (?P<span>[0-9.]+)(?P<unit>m?s)\s*$")
_REMOTE = re.compile(r"Remote wall time: .*?, (?P<total>[0-9.]+)(?P<unit>m?s) total")


def _seconds(value: str, unit: str) -> float:
    return float(value) / (1000.0 if unit == "ms" else 1.0)


def stage_seconds(stats: str) -> dict[str, float]:
    """{'read_s', 'compute_s', 'write_s'} (operator spans) and '<stage>_task_s' (summed
    task time) for the stages found, or 'read_compute_write_s' / '_task_s' when Ray Data
    fused them into one operator; {} when the text has none (stats unavailable)."""
    out: dict[str, float] = {}
    stage = None
    for line in stats.splitlines():
        m = _OPERATOR.match(line.strip())
        if m:
            # A fused operator ("_read_units->assign_batch->Write") runs its stages in
            # the same task: its span and task seconds are reported under the joined
            # name ("read_compute_write_s"), not credited to each stage.
            found = [s for frag, s in _STAGES if frag in m["name"]]
            stage = "_".join(found) if found else None
            if stage is not None:
                out[f"{stage}_s"] = round(_seconds(m["span"], m["unit"]), 3)
            continue
        r = _REMOTE.search(line)
        if r and stage is not None:
            out[f"{stage}_task_s"] = round(_seconds(r["total"], r["unit"]), 3)
            stage = None
    return out
