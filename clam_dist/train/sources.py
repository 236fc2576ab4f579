"""The run's data source and the once-per-run initialisation (driver side, no Ray).

Initialisation at scale: one Dask pass for feature statistics, a uniform sample, k-means++
(or k-means||, or k-means++ refined by Lloyd) on the standardised sample, and beta from
the data. The result travels to every worker in the TorchTrainer loop config, so all
workers start from the same prototypes (and the loop asserts it at step 0).
"""

from __future__ import annotations

import numpy as np
import torch

from clam_dist import methods
from clam_dist.config import ConfigError
from clam_dist.data.source import VectorSource
from clam_dist.train.config import TrainConfig


def make_source(cfg: TrainConfig) -> VectorSource:
    d = cfg.data
    if not d.url:
        raise ConfigError("data.url: a Parquet prefix is required")
    return VectorSource.from_config(d.url, d)


def init_sample(cfg: TrainConfig):
    """The run's uniform sample of ``data.init_sample`` rows (raw, with ids)."""
    from clam_dist.data.stats import sample_rows

    return sample_rows(make_source(cfg), cfg.data.init_sample, cfg.run.seed)


def initialise(cfg: TrainConfig, sample=None) -> dict:
    """Statistics, initial prototypes and beta, computed once on the driver from the
    run's sample (drawn here when not given)."""
    from clam_dist.data.stats import feature_stats
    from clam_dist.models.clam import beta_from_data
    from clam_dist.models.seeding import trainer_start

    stats = feature_stats(make_source(cfg))
    sample = init_sample(cfg) if sample is None else sample
    k = cfg.model.n_clusters
    if k > len(sample):
        n = make_source(cfg).num_rows()
        hint = (
            f"raise data.init_sample (now {cfg.data.init_sample}) or lower k"
            if n > len(sample)
            else f"the data has only {n} rows: lower k to at most {n}"
        )
        raise ValueError(
            f"model.n_clusters={k} is larger than the initialisation sample "
            f"({len(sample)} rows); {hint}"
        )
    mean, scale = scaler(stats, cfg.data.standardize, sample.x)
    z = torch.from_numpy(standardize(sample.x, mean, scale))
    fills = {"mean": stats.mean, "min": stats.min, "max": stats.max, "zero": mean}
    fill = (fills[cfg.model.fill] - mean) / scale
    common = {
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "fill": np.asarray(fill, dtype=np.float32).tolist(),
        "rows": int(stats.count),
    }
    gen = torch.Generator().manual_seed(cfg.run.seed)
    own = methods.get(cfg.model.method).load_hooks().initial_prototypes(cfg, z, gen)
    if own:  # a method that seeds its prototypes itself (DCAM: in its latents)
        return {**own, **common}
    protos = trainer_start(z, k, cfg.model.init, cfg.model.metric, gen)
    beta = (
        cfg.model.beta
        if cfg.model.beta is not None
        else beta_from_data(z, protos, cfg.model.metric)
    )
    return {"prototypes": protos.numpy().tolist(), "beta": float(beta), **common}


def standardize(x: np.ndarray, mean, scale) -> np.ndarray:
    """Rows in the run's standardised space (float32), as the workers see them."""
    return ((x - np.asarray(mean, np.float64)) / np.asarray(scale, np.float64)).astype(np.float32)


def scaler(stats, standardize, sample_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The run's (mean, scale) by clam_dist/models/scaling.py's rule, from the Dask
    statistics of every row; "auto"'s integer-pixel case is judged on the run's sample
    (whole numbers there and every value of the data in [0, 255])."""
    from clam_dist.models.scaling import scaling_from_stats

    integral = bool(np.all(sample_x == np.round(sample_x)))
    return scaling_from_stats(stats.mean, stats.std, stats.min, stats.max, integral, standardize)
