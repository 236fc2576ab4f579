"""DCAM's hooks. On the trainer: ``dcam.pretrain_epochs`` of reconstruction, then
prototypes by k-means on the pretrained latents of the run's sample, then the joint loss
within the reconstruction bound (``objective.py``); artifacts carry the encoder. A warm
refresh (``warm_fit``) starts from the parent's autoencoder and the given prototypes."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clam_dist.artifacts import ModelArtifact
from clam_dist.config import ConfigError
from clam_dist.methods.base_hooks import BaseHooks
from clam_dist.methods.dcam.config import DCAMSection
from clam_dist.methods.dcam.estimator import DCAM
from clam_dist.methods.dcam.model import EncoderSpec, encoder_from_artifact
from clam_dist.methods.dcam.objective import DCAMObjective, encoder_spec
from clam_dist.methods.dcam.trial import DCAMParams, DCAMTrial
from clam_dist.methods.dcam.trial import encoder_spec as trial_encoder_spec
from clam_dist.methods.spec import WarmFit
from clam_dist.sections import values_of
from clam_dist.tune.methods import am_params, am_sections, common_params
from clam_dist.tune.space import check_bundled_width
from clam_dist.tune.trial import TrialData


def _architecture(dc: DCAMSection) -> dict:
    return {
        "encoder": dc.encoder,
        "latent_dim": dc.latent_dim,
        "hidden": None if dc.hidden is None else tuple(dc.hidden),
        "image_shape": None if dc.image_shape is None else tuple(dc.image_shape),
    }


class Hooks(BaseHooks):
    def make_objective(
        self, cfg: Any, init: dict, device: torch.device, sample: np.ndarray | None
    ) -> DCAMObjective:
        if sample is None:
            raise ValueError("DCAM training needs the initialisation sample (for k-means)")
        return DCAMObjective(cfg, init, device, sample)

    def initial_prototypes(self, cfg: Any, z: torch.Tensor, generator: torch.Generator) -> dict:
        # The prototypes live in the latent space of an autoencoder that does not exist
        # yet: the objective sets them (k-means on the pretrained latents of the sample)
        # when pretraining ends; here placeholders.
        return {"prototypes": [[0.0] * cfg.dcam.latent_dim] * cfg.model.n_clusters, "beta": 1.0}

    def extra_epochs(self, cfg: Any) -> int:
        return cfg.dcam.pretrain_epochs

    def check_train_config(self, cfg: Any, n_features: int) -> None:
        dc = cfg.dcam
        if dc.pretrain_epochs < 0 or dc.recon_tolerance < 0 or dc.recon_weight < 0:
            raise ValueError(
                "dcam.pretrain_epochs, dcam.recon_tolerance and dcam.recon_weight must be "
                f">= 0, got {dc.pretrain_epochs}, {dc.recon_tolerance}, {dc.recon_weight}"
            )
        encoder_spec(cfg, n_features)  # raises naming the shape when images do not fit
        if cfg.data.init_sample < cfg.model.n_clusters:
            raise ValueError(
                f"data.init_sample={cfg.data.init_sample} rows cannot seed model.n_clusters="
                f"{cfg.model.n_clusters} latent prototypes"
            )

    def scratch_fit(self, config: Any, z: np.ndarray, seed: int) -> WarmFit:
        """The in-memory DCAM fit (pretraining, latent k-means, joint phase) on ``z``."""
        import copy

        seeded = copy.copy(config)
        seeded.seed = int(seed)
        est = self.fit_on_sample(seeded, z)
        d = z.shape[1]
        art = est.to_artifact(
            scaler_mean=np.zeros(d), scaler_scale=np.ones(d), meta=self.estimator_history(est)
        )
        fields = {"beta": art.beta, "alpha": art.alpha, "steps": art.steps, "metric": art.metric}
        return WarmFit(
            prototypes=art.prototypes,
            fields={**fields, "tensors": dict(art.tensors), "meta": dict(art.meta)},
            steps=0,
        )

    def make_estimator(self, config: Any) -> DCAM:
        m, o, dc = config.model, config.optim, config.dcam
        return DCAM(
            n_clusters=m.n_clusters,
            **_architecture(dc),
            beta=m.beta,
            alpha=m.alpha,
            steps=m.steps,
            metric=m.metric,
            mask_ratio=m.mask_ratio,
            pretrain_epochs=dc.pretrain_epochs,
            epochs=o.epochs,
            batch_size=o.batch_size,
            lr=o.lr,
            recon_weight=dc.recon_weight,
            recon_tolerance=dc.recon_tolerance,
            recon_bound=dc.recon_bound,
            standardize=False,  # the caller standardised the sample with global statistics
            random_state=config.seed,
        )

    def estimator_history(self, estimator: Any) -> dict:
        return {"joint_history": estimator.history_}

    def warm_fit(
        self, config: Any, z: np.ndarray, parent: ModelArtifact, prototypes: np.ndarray, seed: int
    ) -> WarmFit:
        """The joint phase on the in-process Trainer for ``optim.epochs`` epochs, from the
        parent's autoencoder (its architecture: meta['encoder'], whatever [dcam] says),
        ``prototypes`` and the parent's beta; no pretraining and no k-means. A parent
        without decoder weights (a cold fit's artifact carries the encoder only) first
        gets a decoder refitted for max(1, dcam.pretrain_epochs) epochs, encoder and
        prototypes frozen. The reconstruction bound's reference is the warm start's own
        reconstruction loss on ``z``'s sample (data.init_sample rows at most)."""
        from clam_dist import methods
        from clam_dist.sections import ModelSection, OptimSection, values_of
        from clam_dist.train.in_process import fit_config, memory_init, train_in_process
        from clam_dist.train.memory_batches import row_chunk_for

        if "encoder" not in parent.meta:
            raise ValueError("the parent artifact has no meta['encoder']: not a DCAM model")
        spec = EncoderSpec.from_json(parent.meta["encoder"])
        z = np.ascontiguousarray(z, dtype=np.float32)
        prototypes = np.ascontiguousarray(prototypes, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != spec.n_features:
            raise ValueError(
                f"rows have shape {z.shape}, the parent's encoder reads {spec.n_features} features"
            )
        if prototypes.ndim != 2 or prototypes.shape[1] != spec.latent_dim or not len(prototypes):
            raise ValueError(
                f"prototypes have shape {prototypes.shape}, expected (k, {spec.latent_dim})"
            )
        refit_decoder = not any(n.startswith("decoder.") for n in parent.tensors)
        model = values_of(ModelSection, config.model)
        model.update(n_clusters=int(len(prototypes)), beta=float(parent.beta))
        sections = {"model": model, "optim": values_of(OptimSection, config.optim)}
        for name in methods.sections():  # every method's own section rides along
            section = getattr(config, name)
            sections[name] = values_of(type(section), section)
        sections["dcam"].update(
            encoder=spec.kind,
            latent_dim=spec.latent_dim,
            hidden=list(spec.hidden),
            image_shape=None if spec.image_shape is None else list(spec.image_shape),
            pretrain_epochs=max(1, config.dcam.pretrain_epochs) if refit_decoder else 0,
        )
        sample = z
        if len(z) > config.data.init_sample:  # the joint start's and the bound's rows
            rows = np.random.default_rng(seed).choice(len(z), config.data.init_sample, False)
            sample = z[np.sort(rows)]
        sections["data"] = {"init_sample": int(len(sample))}
        cfg = fit_config(parent.method, seed, sections)
        init = memory_init(prototypes, parent.beta, len(z), fill=np.zeros(len(z[0]), np.float32))
        init["autoencoder"] = dict(parent.tensors)
        result = train_in_process(cfg, z, init, sample=sample, row_chunk=row_chunk_for(len(z)))
        return WarmFit(
            prototypes=result.update.prototypes().cpu().numpy(),
            fields=result.update.artifact_fields(),
            steps=int(result.history[-1]["step"]) if result.history else 0,
            losses=[(int(h["step"]), float(h["loss"])) for h in result.history],
        )

    def encoder(self, artifact: ModelArtifact) -> torch.nn.Module:
        return encoder_from_artifact(artifact)

    def trial_params(self, config: Any, k: int, point: dict, seed: int | None) -> DCAMParams:
        dc = config.dcam
        return DCAMParams(
            **common_params(config, k, point, seed),
            **am_params(config, point),
            recon_weight=float(point["recon_weight"]),
            **_architecture(dc),
            pretrain_epochs=dc.pretrain_epochs,
            recon_tolerance=dc.recon_tolerance,
            recon_bound=dc.recon_bound,
            epochs=config.budget.max_epochs,  # the most joint epochs a trial steps
        )

    def make_trial(self, data: TrialData, params: DCAMParams) -> DCAMTrial:
        return DCAMTrial(data, params)

    def model_sections(self, config: Any, k: int, point: dict, final: dict) -> dict:
        model: dict = {"method": config.model.method, "n_clusters": k}
        # DCAM's beta lives in a latent space the training job builds anew (other rows,
        # batches, workers), so an absolute beta carries over only as far as that latent
        # scale does. At scale 1 the job derives beta from its own latents, which is
        # exactly what was scored, so no beta is written; otherwise scale x the trials'
        # mean latent beta is the only form TrainConfig takes.
        if float(point["beta_scale"]) != 1.0:
            model["beta"] = float(final["beta"])
        model.update(am_sections(config, point, final))
        # The trials' [dcam] section whole, with the searched weight.
        dcam = dict(values_of(DCAMSection, config.dcam), recon_weight=float(point["recon_weight"]))
        return {"model": model, "dcam": dcam}

    def check_tune_job(self, config: Any) -> None:
        check_dcam(config.dcam)
        check_bundled_width(config)

    def check_tune_data(self, config: Any, n_features: int) -> None:
        """The encoder must fit the data (e.g. a conv encoder's image shape)."""
        try:
            trial_encoder_spec(DCAMParams(n_clusters=1, **_architecture(config.dcam)), n_features)
        except ValueError as exc:
            raise ConfigError(f"dcam: {exc}") from exc


def check_dcam(dc: DCAMSection) -> None:
    """The [dcam] section's own Tune checks (the data's width is checked once it is loaded)."""
    if dc.recon_weight != DCAMSection().recon_weight:
        raise ConfigError(
            f"dcam.recon_weight={dc.recon_weight}: Tune searches it; set search.recon_weight "
            f"= [{dc.recon_weight}, {dc.recon_weight}] to fix it instead"
        )
    if dc.latent_dim < 1:
        raise ConfigError(f"dcam.latent_dim must be >= 1, got {dc.latent_dim}")
    if dc.pretrain_epochs < 0:
        raise ConfigError(f"dcam.pretrain_epochs must be >= 0, got {dc.pretrain_epochs}")
    if not dc.recon_tolerance >= 0:
        raise ConfigError(f"dcam.recon_tolerance must be >= 0, got {dc.recon_tolerance}")
    if dc.hidden is not None and (not dc.hidden or min(dc.hidden) < 1):
        raise ConfigError(f"dcam.hidden must be sizes >= 1, got {dc.hidden}")
    if dc.encoder == "conv" and dc.hidden is not None and len(dc.hidden) != 2:
        raise ConfigError(
            f"dcam.hidden must be [c1, c2] channels for the conv encoder, got {dc.hidden}"
        )
    if dc.image_shape is not None and (len(dc.image_shape) != 3 or min(dc.image_shape) < 1):
        raise ConfigError(f"dcam.image_shape must be [C, H, W] > 0, got {dc.image_shape}")
