"""The run's data source and the once-per-run initialisation (driver side, no Ray).

Initialisation at scale: one Dask pass for feature statistics, a uniform sample, k-means++
(or k-means||, or k-means++ refined by Lloyd) on the standardised sample, and beta from
the data. The result travels to every worker in the TorchTrainer loop config, so all
workers start from the same prototypes (and the loop asserts it at step 0).
"""

from __future__ import annotations

import numpy as np
import torch

from clam_dist.config import ConfigError
from clam_dist.data.source import VectorSource
from clam_dist.train.config import TrainConfig


def make_source(cfg: TrainConfig) -> VectorSource:
    d = cfg.data
    if not d.url:
        raise ConfigError("data.url: a Parquet prefix is required")
    return VectorSource.from_config(d.url, d)


def initialise(cfg: TrainConfig) -> dict:
    """Statistics, sample, initial prototypes and beta, computed once on the driver."""
    from clam_dist.data.stats import feature_stats, sample_rows
    from clam_dist.models.clam import beta_from_data
    from clam_dist.models.kmeans import kmeans_parallel_init, kmeans_plus_plus, lloyd

    source = make_source(cfg)
    stats = feature_stats(source)
    sample = sample_rows(source, cfg.data.init_sample, cfg.run.seed)
    k = cfg.model.n_clusters
    if k > len(sample):
        raise ValueError(
            f"model.n_clusters={k} is larger than the initialisation sample ({len(sample)} rows); "
            "raise data.init_sample or lower k"
        )
    mean, scale = scaler(stats, cfg.data.standardize)
    z = torch.from_numpy(((sample.x - mean) / scale).astype(np.float32))
    fills = {"mean": stats.mean, "min": stats.min, "max": stats.max, "zero": mean}
    fill = (fills[cfg.model.fill] - mean) / scale
    common = {
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "fill": np.asarray(fill, dtype=np.float32).tolist(),
        "rows": int(stats.count),
    }
    if cfg.model.method == "dcam":
        # DCAM's prototypes live in the latent space of an autoencoder that does not exist
        # yet: the loop sets them (k-means on the pretrained latents of the sample) when
        # pretraining ends. Here: placeholders, and the standardised sample (the caller
        # pops it: it travels beside the JSON-able init, never into checkpoints).
        latent = cfg.dcam.latent_dim
        return {"prototypes": [[0.0] * latent] * k, "beta": 1.0, **common, "sample": z.numpy()}
    gen = torch.Generator().manual_seed(cfg.run.seed)
    if cfg.model.init == "kmeans||":
        protos = kmeans_parallel_init(z, k, generator=gen, metric=cfg.model.metric)
    else:
        protos = kmeans_plus_plus(z, k, gen, metric=cfg.model.metric)
        if cfg.model.init == "kmeans":
            protos = lloyd(z, protos, max_iter=100, metric=cfg.model.metric).centers
    beta = (
        cfg.model.beta
        if cfg.model.beta is not None
        else beta_from_data(z, protos, cfg.model.metric)
    )
    return {"prototypes": protos.numpy().tolist(), "beta": float(beta), **common}


def standardized_sample(cfg: TrainConfig, init: dict) -> np.ndarray:
    """A uniform sample of ``data.init_sample`` rows, standardised with the run's scaler
    (DCAM: k-means on its latents starts the joint phase, and the reconstruction bound
    is checked on it at every epoch end)."""
    from clam_dist.data.stats import sample_rows

    sample = sample_rows(make_source(cfg), cfg.data.init_sample, cfg.run.seed)
    mean = np.asarray(init["mean"], dtype=np.float64)
    scale = np.asarray(init["scale"], dtype=np.float64)
    return ((sample.x - mean) / scale).astype(np.float32)


def scaler(stats, standardize: bool) -> tuple[np.ndarray, np.ndarray]:
    if not standardize:
        return np.zeros_like(stats.mean), np.ones_like(stats.std)
    return stats.mean, np.where(stats.std > 0, stats.std, 1.0)
