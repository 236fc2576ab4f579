"""k-means' own config section: ``[kmeans]`` in every job config (the job configs add
each registered method's section under the method's name; see clam_dist/sections.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal


@dataclass
class KMeansSection:
    """k-means only, on the distributed trainer (model.* holds k, the metric and init)."""

    # where its knobs were before they became the method's own (refused there, naming this)
    MOVED_FROM: ClassVar[dict[str, str]] = {"model.kmeans_algorithm": "algorithm"}

    # "minibatch": each centre the running mean of the rows ever assigned to it, updated
    # every step; "lloyd": sums over the whole epoch, applied at its end (one Lloyd
    # iteration per epoch). The trainer streams its rows, hence mini-batch by default;
    # the in-memory KMeans holds them all and runs Lloyd (its ``algorithm=``).
    algorithm: Literal["minibatch", "lloyd"] = "minibatch"
