"""Defaults of the optional hooks (``spec.MethodHooks``): a method overrides what it does
differently. Method packages import this; generic code never does."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clam_dist.artifacts import ModelArtifact
from clam_dist.methods.spec import Trial, WarmFit


class BaseHooks:
    def make_objective(
        self, cfg: Any, init: dict, device: torch.device, sample: np.ndarray | None
    ) -> Any:
        raise NotImplementedError

    def closed_form_update(self, cfg: Any, init: dict, device: torch.device) -> Any:
        return None  # trained by gradient on make_objective's objective

    def initial_prototypes(self, cfg: Any, z: torch.Tensor, generator: torch.Generator) -> dict:
        return {}  # the trainer's k-means++ / k-means|| (+ Lloyd) seeding

    def extra_epochs(self, cfg: Any) -> int:
        return 0

    def check_train_config(self, cfg: Any, n_features: int) -> None:
        return None

    def make_estimator(self, config: Any) -> Any:
        raise NotImplementedError

    def fit_on_sample(self, config: Any, z: np.ndarray) -> Any:
        return self.make_estimator(config).fit(z)

    def estimator_history(self, estimator: Any) -> dict:
        return {"loss_history": list(getattr(estimator, "loss_history_", []))}

    def scratch_fit(self, config: Any, z: np.ndarray, seed: int) -> WarmFit:
        """The trainer's own start (``seeding.trainer_start`` on ``z``, beta from the data
        unless model.beta is set), then the method's objective on the trainer's loop in
        this process: what `clam-dist train` does, on rows in memory."""
        from clam_dist.models.clam import beta_from_data
        from clam_dist.models.seeding import trainer_start

        x = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))
        m = config.model
        start = trainer_start(
            x, m.n_clusters, m.init, m.metric, torch.Generator().manual_seed(seed)
        )
        beta = m.beta if m.beta is not None else beta_from_data(x, start, m.metric)
        return train_from(config, z, m.method, start.numpy(), float(beta), seed)

    def warm_fit(
        self, config: Any, z: np.ndarray, parent: ModelArtifact, prototypes: np.ndarray, seed: int
    ) -> WarmFit:
        """The method's objective on the distributed loop's Trainer in this process
        (train/in_process.py), from ``prototypes`` and the parent's beta: the same training
        as ``scratch_fit``, only not from a k-means start."""
        return train_from(config, z, parent.method, prototypes, float(parent.beta), seed)

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


def train_from(
    config: Any, z: np.ndarray, method: str, prototypes: np.ndarray, beta: float, seed: int
) -> WarmFit:
    """``method``'s objective trained on ``z`` by the trainer's loop in this process, from
    ``prototypes`` and ``beta``, with the job config's [model], [optim] and method
    sections (k = the number of prototypes)."""
    from clam_dist.train.in_process import memory_init, train_in_process
    from clam_dist.train.memory_batches import row_chunk_for

    cfg = trainer_config(config, method, len(prototypes), beta, seed)
    z = np.ascontiguousarray(z, dtype=np.float32)
    init = memory_init(prototypes, beta, len(z))
    result = train_in_process(cfg, z, init, row_chunk=row_chunk_for(len(z)))
    return WarmFit(
        prototypes=result.update.prototypes().numpy(),
        fields=result.update.artifact_fields(),
        steps=int(result.history[-1]["step"]) if result.history else 0,
        losses=[(int(h["step"]), float(h["loss"])) for h in result.history],
    )


def trainer_config(config: Any, method: str, k: int, beta: float, seed: int) -> Any:
    """The in-process TrainConfig of a job config's [model], [optim] and method sections
    (k prototypes, the given beta)."""
    from clam_dist import methods
    from clam_dist.sections import ModelSection, OptimSection, values_of
    from clam_dist.train.in_process import fit_config

    model = values_of(ModelSection, config.model)
    model.update(n_clusters=int(k), beta=float(beta))
    sections = {"model": model, "optim": values_of(OptimSection, config.optim)}
    for name in methods.sections():  # every method's own section rides along
        section = getattr(config, name)
        sections[name] = values_of(type(section), section)
    return fit_config(method, seed, sections)
