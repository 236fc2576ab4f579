"""Model artifacts: a directory holding ``model.safetensors`` (tensors) and ``model.json``
(metadata). Loading never unpickles. Works on any fsspec URL (local, s3://, memory://).

The JSON is written LAST: a directory whose JSON exists and names every tensor with the
shapes the tensor file holds is a complete artifact; anything else is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import fsspec
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

import clam_dist
from clam_dist import methods
from clam_dist.secrets import persistable

FORMAT = "clam-dist-model"
FORMAT_VERSION = 1
TENSORS_FILE = "model.safetensors"
META_FILE = "model.json"


class ArtifactError(ValueError):
    """A model directory that is missing, not ours, corrupt or inconsistent."""


@dataclass
class ModelArtifact:
    method: str
    prototypes: np.ndarray  # (k, d_model) float32, in the space the dynamics run in
    n_features: int  # d of the INPUT rows
    beta: float
    alpha: float
    steps: int  # kmeans: 0
    metric: str
    scaler_mean: np.ndarray | None = None  # input standardisation, applied first
    scaler_scale: np.ndarray | None = None
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. encoder weights
    meta: dict = field(default_factory=dict)  # JSON-able extras (architecture, metrics)
    library_version: str = clam_dist.__version__

    @property
    def k(self) -> int:
        return int(self.prototypes.shape[0])

    @property
    def d(self) -> int:
        return int(self.prototypes.shape[1])

    @property
    def assignment_rule(self) -> str:
        """How this model labels rows ("am", "dot" or "nearest"): its method's say."""
        return methods.get(self.method).assignment_rule(self)

    def encoder(self):
        """The torch module from input to model space, or None (the input space)."""
        return methods.get(self.method).encoder(self)

    def __post_init__(self) -> None:
        if self.method not in methods.names():
            raise ArtifactError(
                f"method must be one of {list(methods.names())}, got {self.method!r}"
            )
        self.prototypes = np.ascontiguousarray(self.prototypes, dtype=np.float32)
        if self.prototypes.ndim != 2 or self.prototypes.shape[0] == 0:
            raise ArtifactError(
                f"prototypes must be 2-D (k, d) with k >= 1, got shape {self.prototypes.shape}"
            )
        if not np.isfinite(self.prototypes).all():
            raise ArtifactError("prototypes contain NaN/inf: refusing a broken model")
        for name in ("scaler_mean", "scaler_scale"):
            value = getattr(self, name)
            if value is not None:
                value = np.ascontiguousarray(value, dtype=np.float32).reshape(-1)
                if value.shape[0] != self.n_features:
                    raise ArtifactError(
                        f"{name} has {value.shape[0]} entries, expected n_features={self.n_features}"
                    )
                setattr(self, name, value)


def _all_tensors(artifact: ModelArtifact) -> dict[str, np.ndarray]:
    tensors = {"prototypes": artifact.prototypes}
    if artifact.scaler_mean is not None:
        tensors["scaler_mean"] = artifact.scaler_mean
    if artifact.scaler_scale is not None:
        tensors["scaler_scale"] = artifact.scaler_scale
    for name, value in artifact.tensors.items():
        tensors[f"extra.{name}"] = np.ascontiguousarray(value)
    return tensors


def _json_default(value):
    """numpy scalars and small arrays in meta (training metrics often are) become JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} value {value!r} is not JSON-serialisable")


def save_artifact(artifact: ModelArtifact, url: str, storage_options: dict | None = None) -> str:
    """Write the artifact into directory ``url``; returns ``url``."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    tensors = _all_tensors(artifact)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": artifact.method,
        "k": artifact.k,
        "d_model": artifact.d,
        "n_features": int(artifact.n_features),
        "beta": float(artifact.beta),
        "alpha": float(artifact.alpha),
        "steps": int(artifact.steps),
        "metric": artifact.metric,
        "library_version": artifact.library_version,
        "tensor_shapes": {name: list(t.shape) for name, t in tensors.items()},
        # An artifact is meant to be shared: storage options keep only where data lives.
        "meta": persistable(artifact.meta),
    }
    try:
        # Serialise before touching storage: a non-JSON-able meta must not cost the old model.
        meta_bytes = json.dumps(meta, indent=2, sort_keys=True, default=_json_default).encode()
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"artifact meta is not JSON-serialisable: {exc}") from exc
    try:
        fs.makedirs(path, exist_ok=True)
        # A re-save must never leave an old JSON vouching for new tensors: drop it first.
        if fs.exists(f"{path}/{META_FILE}"):
            fs.rm(f"{path}/{META_FILE}")
        fs.pipe(f"{path}/{TENSORS_FILE}", st_save(tensors))
        fs.pipe(f"{path}/{META_FILE}", meta_bytes)
    except OSError as exc:
        raise ArtifactError(f"cannot write model artifact to {url}: {exc}") from exc
    return url


def _check_consistent(url: str, meta: dict, tensors: dict) -> None:
    """model.json's numbers must describe its tensors and be usable: a hand-edited or
    mismatched file is refused here, not found out inside the assignment's workers."""
    where = f"{url}/{META_FILE}"
    protos = tensors.get("prototypes")
    if protos is None or protos.ndim != 2:
        raise ArtifactError(f"{url}/{TENSORS_FILE}: no 2-D 'prototypes' tensor")
    checks = [
        ("k", meta.get("k"), protos.shape[0], "the prototypes' rows"),
        ("d_model", meta.get("d_model"), protos.shape[1], "the prototypes' columns"),
    ]
    for name in ("scaler_mean", "scaler_scale"):
        if name in tensors:
            checks.append(("n_features", meta.get("n_features"), tensors[name].shape[0], name))
    for field_name, said, found, what in checks:
        if said is not None and said != found:
            raise ArtifactError(
                f"{where}: {field_name} = {said}, but {what} say {found} (mismatched files?)"
            )
    beta, alpha, steps = meta.get("beta"), meta.get("alpha"), meta.get("steps")
    if not (isinstance(beta, int | float) and math.isfinite(beta) and beta > 0):
        raise ArtifactError(f"{where}: beta must be a finite number > 0, got {beta!r}")
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0):
        raise ArtifactError(f"{where}: alpha must be a finite number > 0, got {alpha!r}")
    if not (isinstance(steps, int) and steps >= 0):
        raise ArtifactError(f"{where}: steps must be an integer >= 0, got {steps!r}")
    if not np.isfinite(protos).all():
        raise ArtifactError(f"{url}/{TENSORS_FILE}: prototypes contain NaN/inf")


def load_artifact(url: str, storage_options: dict | None = None) -> ModelArtifact:
    """Read and validate an artifact directory written by ``save_artifact``."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    meta_path, tensor_path = f"{path}/{META_FILE}", f"{path}/{TENSORS_FILE}"
    if not fs.exists(meta_path):
        raise ArtifactError(
            f"{url}: no {META_FILE}: not a clam-dist model directory (or an incomplete save)"
        )
    try:
        raw = fs.cat(meta_path)
    except OSError as exc:
        raise ArtifactError(f"{url}/{META_FILE}: cannot read: {exc}") from exc
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{url}/{META_FILE}: not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{url}: {META_FILE} is not a clam-dist model (format marker missing)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{url}: unsupported format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    if not fs.exists(tensor_path):
        raise ArtifactError(f"{url}: {TENSORS_FILE} is missing")
    try:
        tensors = st_load(fs.cat(tensor_path))
    except (SafetensorError, ValueError, OSError) as exc:
        raise ArtifactError(f"{url}/{TENSORS_FILE}: corrupt safetensors file: {exc}") from exc
    expected = meta.get("tensor_shapes", {})
    found = {name: list(t.shape) for name, t in tensors.items()}
    if expected != found:
        raise ArtifactError(f"{url}: tensors {found} do not match the metadata {expected}")
    _check_consistent(url, meta, tensors)
    try:
        return ModelArtifact(
            method=meta["method"],
            prototypes=tensors["prototypes"],
            n_features=int(meta["n_features"]),
            beta=float(meta["beta"]),
            alpha=float(meta["alpha"]),
            steps=int(meta["steps"]),
            metric=meta["metric"],
            scaler_mean=tensors.get("scaler_mean"),
            scaler_scale=tensors.get("scaler_scale"),
            tensors={n[len("extra.") :]: t for n, t in tensors.items() if n.startswith("extra.")},
            meta=meta.get("meta", {}),
            library_version=meta.get("library_version", "unknown"),
        )
    except KeyError as exc:
        raise ArtifactError(f"{url}: {META_FILE} lacks field {exc}") from exc
