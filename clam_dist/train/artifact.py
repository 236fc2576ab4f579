"""The model artifact a training run ends with (written by rank 0)."""

from __future__ import annotations

import numpy as np
import torch

from clam_dist.secrets import persistable
from clam_dist.train.config import TrainConfig


def write_artifact(
    cfg: TrainConfig,
    init: dict,
    fields: dict,
    prototypes: torch.Tensor,
    run_url: str,
    history: list[dict],
    workers: list[dict] | None = None,
) -> None:
    """``fields``: the method's artifact fields (beta, alpha, steps, metric, optional
    tensors and meta). ``workers``: where each worker ran and what it did (rank, node_id,
    rows, seconds), kept in the meta."""
    from clam_dist.artifacts import ModelArtifact, save_artifact
    from clam_dist.config import to_dict

    meta = {
        **fields.pop("meta", {}),
        "final_metrics": history[-1],
        "loss_history": [h["epoch_loss"] for h in history if "epoch_loss" in h],
        "trained_with": "ray-train",
        **({"workers": workers} if workers else {}),
        "config": persistable(to_dict(cfg)),  # an artifact is shared: no credentials
    }
    art = ModelArtifact(
        method=cfg.model.method,
        prototypes=prototypes.detach().cpu().numpy(),
        n_features=len(init["mean"]),
        scaler_mean=np.asarray(init["mean"], np.float32),
        scaler_scale=np.asarray(init["scale"], np.float32),
        meta=meta,
        **fields,
    )
    save_artifact(art, f"{run_url}/{cfg.run.name}/model", cfg.data.storage_options)
