"""In-context quantization as a Ray Data ``map_batches`` stage.

Each batch handed to the stage is one context: identity attention X <- softmax(beta S) X
runs over its rows only, then rows that coincide within a tolerance form one group. A
large dataset is thus quantized partition by partition, independently (group ids are
local to the batch). The math is ``clam_dist.models.attention.quantize_context``; this
module only adapts numpy batches and knows nothing of file formats.
"""

from __future__ import annotations

import numpy as np
import torch

from clam_dist.models.attention import DEFAULT_MAX_CONTEXT, SCORES, check_beta, quantize_context

REPRESENTATIVE_KINDS = ("vector", "index")


class QuantizeBatches:
    """Callable class for ``Dataset.map_batches(..., batch_format="numpy")``.

    Reads column ``column`` (float (n, d)); adds ``group`` (int64 local group id),
    ``group_size`` (int64 rows in that group) and ``representative``: the group's
    representative vector (float32 (n, d), ``representative='vector'``) or the row index
    within the batch of the group's first row (int64, ``'index'``).
    """

    def __init__(
        self,
        column: str = "x",
        beta: float | None = None,
        steps: int = 30,
        score: str = "distance",
        tol: float | None = None,
        rel_tol: float = 1e-2,
        representative: str = "vector",
        max_context: int = DEFAULT_MAX_CONTEXT,
    ):
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if beta is not None:
            check_beta(beta)
        if representative not in REPRESENTATIVE_KINDS:
            raise ValueError(
                f"representative must be one of {REPRESENTATIVE_KINDS}, got {representative!r}"
            )
        self.column, self.beta, self.steps, self.score = column, beta, steps, score
        self.tol, self.rel_tol, self.representative = tol, rel_tol, representative
        self.max_context = max_context

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.column not in batch:
            raise KeyError(f"batch has no column {self.column!r}; columns: {sorted(batch)}")
        raw = batch[self.column]
        if raw.dtype == object:  # ragged/list cells: stack them, refusing ragged rows
            try:
                raw = np.stack([np.asarray(r, dtype=np.float32) for r in raw])
            except ValueError as exc:
                raise ValueError(
                    f"column {self.column!r} holds rows of different lengths: {exc}"
                ) from exc
        x = np.asarray(raw)
        if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
            raise ValueError(
                f"column {self.column!r} must be numeric (n, d), got shape {x.shape} dtype {x.dtype}"
            )
        res = quantize_context(
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
            beta=self.beta, steps=self.steps, score=self.score, tol=self.tol,
            rel_tol=self.rel_tol, max_context=self.max_context,
        )  # fmt: skip
        groups = res.groups.numpy().astype(np.int64)
        out = dict(batch)
        out["group"] = groups
        out["group_size"] = np.bincount(groups)[groups].astype(np.int64)
        if self.representative == "vector":
            out["representative"] = res.representatives.numpy().astype(np.float32)[groups]
        else:
            out["representative"] = res.leaders.numpy().astype(np.int64)[groups]
        return out


def quantize_dataset(dataset, context_rows: int, concurrency: int = 1, **stage_kwargs):
    """``dataset.map_batches`` with one context per batch of ``context_rows`` rows
    (the last batch of a block may be smaller). Lazy: returns a new Ray Dataset."""
    if not isinstance(context_rows, int) or context_rows < 1:
        raise ValueError(f"context_rows must be an integer >= 1, got {context_rows!r}")
    max_context = stage_kwargs.get("max_context", DEFAULT_MAX_CONTEXT)
    if context_rows > max_context:
        raise ValueError(
            f"context_rows={context_rows} exceeds max_context={max_context}: identity attention "
            "is quadratic in the context; use smaller contexts or raise max_context"
        )
    return dataset.map_batches(
        QuantizeBatches,
        fn_constructor_kwargs=stage_kwargs,
        batch_size=context_rows,
        batch_format="numpy",
        concurrency=concurrency,
    )
