"""Training the models of a schedule: the first version from a partition's sample, and a
warm refresh of the champion (its prototypes, plus new ones for structure it cannot
explain, trained by the method's ``warm_fit`` hook; empty clusters retired; ids mapped to
the parent's). No Ray: the training set is bounded (``refresh.train_rows`` of the
partition plus the reservoir), so it is trained in this process; the assignment of every
row is Ray Data's (clam_dist/registry/partition.py)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch

from clam_dist import methods
from clam_dist.artifacts import ModelArtifact
from clam_dist.methods.spec import WarmFit
from clam_dist.models.predictor import ClusterPredictor, drift_threshold
from clam_dist.models.scaling import scaling_of_rows
from clam_dist.registry.config import PartitionConfig, RefreshSection
from clam_dist.registry.ids import IdMapping, map_ids


class RefreshUnsupported(NotImplementedError):
    """The method cannot be refreshed warm (the partition is still assigned)."""


@dataclass
class Refreshed:
    """A challenger and how it came to be."""

    artifact: ModelArtifact
    mapping: IdMapping
    fit: WarmFit
    added: int  # new prototypes seeded from rows the champion could not explain
    retired_empty: list[int] = field(default_factory=list)  # ids of clusters left empty
    unexplained_share: float = 0.0  # of the partition's training rows


def with_seed(config: PartitionConfig, seed: int) -> PartitionConfig:
    """A copy of ``config`` whose seed is ``seed`` (everything a fit draws follows it)."""
    out = copy.copy(config)
    out.seed = int(seed)
    return out


def fine_tuning(config: PartitionConfig, seed: int) -> PartitionConfig:
    """The refresh's training config: ``seed``, and optim.lr x refresh.lr_factor."""
    out = with_seed(config, seed)
    out.optim = copy.copy(config.optim)
    if out.optim.lr is not None:
        out.optim.lr = float(out.optim.lr) * config.refresh.lr_factor
    return out


def scaler_of(x: np.ndarray, standardize) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale of the first version's training rows, by the one rule of
    clam_dist/models/scaling.py (data.standardize: True, False or "auto")."""
    mean, scale = scaling_of_rows(x, standardize)
    return mean.astype(np.float32), scale.astype(np.float32)


def standardised(artifact: ModelArtifact, x: np.ndarray) -> np.ndarray:
    mean = 0.0 if artifact.scaler_mean is None else artifact.scaler_mean
    scale = 1.0 if artifact.scaler_scale is None else artifact.scaler_scale
    return ((x - mean) / scale).astype(np.float32)


def train_first(config: PartitionConfig, x: np.ndarray, seed: int) -> ModelArtifact:
    """The first version of a name: the method trained from scratch (its ``scratch_fit``
    hook: the trainer's start and loop in this process) on the partition's sample, in a
    scaler of that sample; ids 0..k-1."""
    hooks = methods.get(config.model.method).load_hooks()
    mean, scale = scaler_of(x, config.data.standardize)
    z = ((x - mean) / scale).astype(np.float32)
    fit = hooks.scratch_fit(with_seed(config, seed), z, seed)
    artifact = _artifact(config.model.method, fit, mean, scale, "run-partition: first version")
    artifact.meta.update(train_rows=int(len(x)))
    artifact.meta["cluster_ids"] = list(range(artifact.k))
    artifact.meta.update(drift_threshold(artifact, x))
    return artifact


def predict(artifact: ModelArtifact, x: np.ndarray, outputs=("energy",)) -> dict:
    return ClusterPredictor.from_artifact(artifact).predict(x, outputs)


def cluster_shares(artifact: ModelArtifact, x: np.ndarray) -> dict[str, float]:
    """Each cluster id's share of the rows ``x`` (the drift baseline of a version)."""
    labels = predict(artifact, x, ())["cluster"]
    counts = np.bincount(labels, minlength=artifact.k)
    ids = artifact.meta["cluster_ids"]
    return {str(ids[j]): float(counts[j] / max(1, len(x))) for j in range(artifact.k)}


def new_prototypes(
    z_unexplained: np.ndarray, rows: int, tightness: float, settings: RefreshSection, seed: int
) -> np.ndarray:
    """Prototypes for new structure among the rows the champion cannot explain.

    k-means over those rows alone with max_new_clusters candidates over-splits a new
    group into several pieces; pieces are then merged greedily (the pair whose union is
    tightest first) while the union stays within 1.25 x ``tightness`` (the champion's own
    mean squared distance per row): two halves of one blob merge back to one blob's
    spread, two distinct groups do not. A merged group becomes a prototype when it holds
    at least min_new_cluster_share of the ``rows`` training rows and is itself within
    that tightness (the tails of existing clusters, scattered around many of them, are
    neither). Largest first, at most max_new_clusters."""
    m = settings.max_new_clusters
    need = int(np.ceil(settings.min_new_cluster_share * rows))
    if m == 0 or len(z_unexplained) < max(need, 2):
        return np.zeros((0, z_unexplained.shape[1]), np.float32)
    from clam_dist.models.kmeans import kmeans_plus_plus, lloyd

    x = torch.from_numpy(np.ascontiguousarray(z_unexplained, dtype=np.float32))
    seeds = kmeans_plus_plus(x, min(m, len(x)), torch.Generator().manual_seed(seed))
    fit = lloyd(x, seeds, max_iter=50)
    labels = fit.labels.numpy()
    d2 = ((x - fit.centers[fit.labels]) ** 2).sum(1).numpy().astype(np.float64)
    groups = []  # (rows, centre, mean squared distance to the centre)
    for j in range(len(seeds)):
        members = labels == j
        if members.any():
            groups.append((int(members.sum()), fit.centers[j].numpy().astype(np.float64),
                           float(d2[members].mean())))  # fmt: skip
    bound = 1.25 * tightness
    while len(groups) > 1:
        best = None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                merged = _union(groups[a], groups[b])
                if merged[2] <= bound and (best is None or merged[2] < best[0][2]):
                    best = (merged, a, b)
        if best is None:
            break
        merged, a, b = best
        groups = [g for i, g in enumerate(groups) if i not in (a, b)] + [merged]
    kept = sorted((g for g in groups if g[0] >= need and g[2] <= bound), key=lambda g: -g[0])[:m]
    if not kept:
        return np.zeros((0, z_unexplained.shape[1]), np.float32)
    return np.stack([g[1] for g in kept]).astype(np.float32)


def _union(a: tuple, b: tuple) -> tuple:
    """(rows, centre, mean squared distance to the centre) of two groups together."""
    na, ca, sa = a
    nb, cb, sb = b
    n = na + nb
    gap = float(((ca - cb) ** 2).sum())
    return n, (na * ca + nb * cb) / n, (na * sa + nb * sb) / n + na * nb / n**2 * gap


def refresh(
    config: PartitionConfig,
    champion: ModelArtifact,
    x_partition: np.ndarray,
    x_reservoir: np.ndarray,
    next_id: int,
    seed: int,
) -> Refreshed:
    """The challenger: the champion's prototypes plus new ones, trained warm on the
    partition's rows and the reservoir, empty clusters retired, ids mapped."""
    settings = config.refresh
    hooks = methods.get(champion.method).load_hooks()
    start, above = warm_start(config, champion, x_partition, seed)
    added = start[champion.k :]
    z_partition = standardised(champion, x_partition)
    z = z_partition
    if len(x_reservoir):
        z = np.vstack([z_partition, standardised(champion, x_reservoir)])
    try:
        fit = hooks.warm_fit(fine_tuning(config, seed), z, champion, start, seed)
    except NotImplementedError as exc:
        raise RefreshUnsupported(str(exc)) from exc
    artifact = _challenger(champion, fit)
    # Clusters the partition's and reservoir's rows leave (nearly) empty are retired.
    labels = predict_rows(artifact, z)
    counts = np.bincount(labels, minlength=artifact.k)
    keep = np.flatnonzero(counts >= settings.min_cluster_rows)
    if len(keep) == 0:
        keep = np.arange(artifact.k)
    artifact.prototypes = np.ascontiguousarray(artifact.prototypes[keep])
    mapping = map_ids(
        artifact.prototypes,
        champion.prototypes,
        list(champion.meta["cluster_ids"]),
        next_id,
        settings.match_bound,
    )
    artifact.meta["cluster_ids"] = mapping.ids
    artifact.meta.update(drift_threshold(artifact, x_partition))
    dropped = [j for j in range(len(counts)) if j not in set(keep.tolist())]
    return Refreshed(
        artifact=artifact,
        mapping=mapping,
        fit=fit,
        added=int(len(added)),
        retired_empty=dropped,
        unexplained_share=float(above.mean()) if len(above) else 0.0,
    )


def warm_start(
    config: PartitionConfig, champion: ModelArtifact, x_partition: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(the prototypes a refresh starts from: the champion's, then new ones for groups of
    rows it cannot explain; which rows of ``x_partition`` are above its threshold)."""
    predictor = ClusterPredictor.from_artifact(champion)
    out = predictor.predict(x_partition, ("energy",))
    above = out["energy"] > champion.meta.get("energy_p99", np.inf)
    tightness = float(out["distance"][~above].mean()) if (~above).any() else np.inf
    # New prototypes live where the champion's prototypes do: the standardised rows, or
    # (DCAM) their latents under the champion's encoder, where the predictor's distance
    # and so ``tightness`` are measured too.
    with torch.no_grad():
        z_above = predictor.to_model_space(np.ascontiguousarray(x_partition[above], np.float32))
    added = new_prototypes(z_above.numpy(), len(x_partition), tightness, config.refresh, seed)
    return np.vstack([champion.prototypes, added]).astype(np.float32), above


def predict_rows(artifact: ModelArtifact, z: np.ndarray) -> np.ndarray:
    """Labels of rows already in the artifact's standardised space (no scaler)."""
    bare = copy.copy(artifact)
    bare.scaler_mean = bare.scaler_scale = None
    return ClusterPredictor.from_artifact(bare).predict(z, ())["cluster"]


def _challenger(champion: ModelArtifact, fit: WarmFit) -> ModelArtifact:
    return _artifact(
        champion.method,
        fit,
        champion.scaler_mean,
        champion.scaler_scale,
        "run-partition: warm refresh",
    )


def _artifact(method: str, fit: WarmFit, mean, scale, how: str) -> ModelArtifact:
    fields = dict(fit.fields)
    tensors = fields.pop("tensors", {})
    meta = dict(fields.pop("meta", {}))
    meta.update(
        trained_with=how,
        train_steps=fit.steps,
        loss_history=[loss for _, loss in fit.losses],
        loss_curve=[[step, loss] for step, loss in fit.losses],  # (global step, window loss)
    )
    return ModelArtifact(
        method=method,
        prototypes=fit.prototypes,
        n_features=len(mean),
        scaler_mean=mean,
        scaler_scale=scale,
        tensors=tensors,
        meta=meta,
        **{k: fields[k] for k in ("beta", "alpha", "steps", "metric") if k in fields},
    )
