"""Defaults of the optional hooks (``spec.MethodHooks``): a method overrides what it does
differently. Method packages import this; generic code never does."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clam_dist.artifacts import ModelArtifact
from clam_dist.methods.spec import Trial


class BaseHooks:
    def make_objective(
        self, cfg: Any, init: dict, device: torch.device, sample: np.ndarray | None
    ) -> Any:
        raise NotImplementedError

    def initial_prototypes(self, cfg: Any, z: torch.Tensor, generator: torch.Generator) -> dict:
        return {}  # the trainer's k-means++ / k-means|| (+ Lloyd) seeding

    def extra_epochs(self, cfg: Any) -> int:
        return 0

    def check_train_config(self, cfg: Any, n_features: int) -> None:
        return None

    def fit_on_sample(self, config: Any, z: np.ndarray) -> Any:
        raise NotImplementedError

    def estimator_history(self, estimator: Any) -> dict:
        return {"loss_history": list(getattr(estimator, "loss_history_", []))}

    def encoder(self, artifact: ModelArtifact) -> torch.nn.Module | None:
        return None  # prototypes live in the input space

    def trial_params(self, config: Any, k: int, point: dict, seed: int | None) -> Any:
        raise NotImplementedError(f"{type(self).__module__} registers no Tune trial")

    def make_trial(self, data: Any, params: Any) -> Trial:
        raise NotImplementedError(f"{type(self).__module__} registers no Tune trial")

    def model_sections(self, config: Any, k: int, point: dict, final: dict) -> dict:
        raise NotImplementedError(f"{type(self).__module__} registers no Tune trial")

    def check_tune_job(self, config: Any) -> None:
        return None

    def check_tune_data(self, config: Any, n_features: int) -> None:
        return None
