"""Attention clustering's own config section: ``[attention]`` in every job config (the
job configs add each registered method's section under the method's name; see
clam_dist/sections.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal


@dataclass
class AttentionSection:
    """Attention clustering only (model.* holds k and beta)."""

    # where its knobs were before they became the method's own (refused there, naming this)
    MOVED_FROM: ClassVar[dict[str, str]] = {"model.similarity": "similarity"}

    # "distance" scores -beta/2 ||x - mu_h||^2 (one AM step), "dot" beta x.mu_h; the
    # estimator's ``similarity=`` and Tune's search.similarity are the same knob.
    similarity: Literal["distance", "dot"] = "distance"
