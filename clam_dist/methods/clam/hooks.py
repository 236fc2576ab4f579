"""ClAM's hooks: what the trainer, the pipeline and Tune call (``spec.MethodHooks``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clam_dist.methods.base_hooks import BaseHooks
from clam_dist.methods.clam.estimator import ClAM
from clam_dist.methods.clam.objective import ClAMObjective
from clam_dist.methods.clam.trial import ClAMTrial, TrialParams
from clam_dist.tune.methods import am_params, am_sections, common_params
from clam_dist.tune.trial import TrialData


class Hooks(BaseHooks):
    def make_objective(
        self, cfg: Any, init: dict, device: torch.device, sample: np.ndarray | None
    ) -> ClAMObjective:
        return ClAMObjective(cfg, init, device)

    def make_estimator(self, config: Any) -> ClAM:
        m, o = config.model, config.optim
        return ClAM(
            n_clusters=m.n_clusters,
            beta=m.beta,
            alpha=m.alpha,
            steps=m.steps,
            metric=m.metric,
            mask_ratio=m.mask_ratio,
            lr=o.lr,
            epochs=o.epochs,
            batch_size=o.batch_size,
            n_init=config.train.n_init,
            random_state=config.seed,
            coarse_clusters=m.coarse_clusters,
            nprobe=m.nprobe,
        )

    def trial_params(self, config: Any, k: int, point: dict, seed: int | None) -> TrialParams:
        return TrialParams(
            **common_params(config, k, point, seed),
            **am_params(config, point),
            epochs=config.budget.max_epochs,
        )

    def make_trial(self, data: TrialData, params: TrialParams) -> ClAMTrial:
        return ClAMTrial(data, params)

    def model_sections(self, config: Any, k: int, point: dict, final: dict) -> dict:
        model = {
            "method": config.model.method,
            "n_clusters": k,
            "init": "kmeans",
            "beta": float(final["beta"]),
        }
        model.update(am_sections(config, point, final))
        return {"model": model}
