"""What labels one batch of rows in an assignment worker: the model loaded from its URL,
its outputs, and the rows whose outputs are not finite (refused or dropped)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from clam_dist.artifacts import load_artifact
from clam_dist.data.errors import DataError


class InjectedCrash(RuntimeError):
    """Raised by the crash-injection hooks; never raised in normal operation."""


class ClusterAssigner:
    """Labels batches with a model loaded from its URL; built once per worker process
    (assign/worker.py caches it) and called per batch."""

    def __init__(
        self,
        model_url: str,
        storage_options: dict | None,
        outputs: list[str],
        passthrough: list[str],
        fail_after_batches: int = 0,
        device: str = "cpu",
        nan_policy: str = "error",
        input_url: str = "",
    ):
        # Here, not at the top: the driver imports this module and must start in well
        # under a second to refuse bad input (the predictor pulls in torch).
        from clam_dist.models.predictor import ClusterPredictor

        artifact = load_artifact(model_url, storage_options)
        self.artifact = artifact  # its fingerprint is checked against the driver's
        self.predictor = ClusterPredictor.from_artifact(artifact, device=device)
        # A registered model's clusters carry ids that stay put across refreshes
        # (clam_dist/registry/ids.py): its rows are labelled with those, not positions.
        ids = artifact.meta.get("cluster_ids")
        self.cluster_ids = None if ids is None else np.asarray(ids, dtype=np.int64)
        self.outputs = list(outputs)
        self.passthrough = list(passthrough)
        self.batches = 0
        self.fail_after = fail_after_batches
        self.nan_policy = nan_policy
        self.input_url = input_url

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        self.batches += 1
        if self.fail_after and self.batches > self.fail_after:
            raise InjectedCrash(f"injected failure after {self.fail_after} batches")
        pred = self.predictor.predict(batch["x"], self.outputs)
        keep = self._finite_rows(batch, pred)
        if keep is not None:
            batch = {c: v[keep] for c, v in batch.items()}
            pred = {c: v[keep] for c, v in pred.items()}
        cols: dict[str, pa.Array] = {
            "id": pa.array(batch["id"]),
            "cluster": pa.array(
                pred["cluster"] if self.cluster_ids is None else self.cluster_ids[pred["cluster"]]
            ),
            "distance": pa.array(pred["distance"]),
        }
        for name in ("energy", "margin"):
            if name in pred:
                cols[name] = pa.array(pred[name])
        if "probs" in pred:
            probs = np.ascontiguousarray(pred["probs"], dtype=np.float32)
            cols["probs"] = pa.FixedSizeListArray.from_arrays(
                pa.array(probs.reshape(-1)), probs.shape[1]
            )
        for c in self.passthrough:
            cols[c] = pa.array(batch[c])
        return pa.table(cols)

    def _finite_rows(self, batch: dict, pred: dict) -> np.ndarray | None:
        """Rows whose outputs are all finite (None = every row). Finite inputs can still
        overflow float32 arithmetic (a coordinate of 1e20 squares past 3.4e38): such rows
        are treated like NaN rows, never committed with distance = inf."""
        finite = np.ones(len(batch["x"]), dtype=bool)
        for values in pred.values():
            v = np.asarray(values)
            if v.dtype.kind == "f":
                finite &= np.isfinite(v.reshape(len(v), -1)).all(axis=1)
        if finite.all():
            return None
        if self.nan_policy == "drop":
            return finite
        bad = np.flatnonzero(~finite)
        first = [str(i) for i in np.asarray(batch["id"])[bad[:5]].tolist()]
        raise DataError(
            f"{self.input_url}: {bad.size} row(s) give non-finite distances (values too "
            f"large for float32 arithmetic; first ids: {first}); clean the data or pass "
            "--set nan_policy=drop"
        )
