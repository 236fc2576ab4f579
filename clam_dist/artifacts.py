"""Model artifacts: a directory holding ``model.safetensors`` (tensors) and ``model.json``
(metadata). Loading never unpickles. Works on any fsspec URL (local, s3://, memory://).

The JSON is written LAST: a directory whose JSON exists and names every tensor with the
shapes the tensor file holds is a complete artifact; anything else is refused.
``check_artifact`` makes every check of ``load_artifact`` with bounded reads (model.json,
the safetensors header, the prototypes) before anything is read whole, so a corrupt or
lying file costs no memory; `clam-dist inspect` uses it to refuse what a load refuses.
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
        return methods.get(self.method).rule_for(self.meta)

    def encoder(self):
        """The torch module from input to model space, or None (the input space)."""
        return methods.get(self.method).load_hooks().encoder(self)

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
    from clam_dist.data.buckets import fs_has_buckets, require_bucket

    require_bucket(url, storage_options)  # s3fs's makedirs would create a missing bucket
    try:
        if not fs_has_buckets(fs):  # object stores have no folders to make
            fs.makedirs(path, exist_ok=True)
        # A re-save must never leave an old JSON vouching for new tensors: drop it first.
        if fs.exists(f"{path}/{META_FILE}"):
            fs.rm(f"{path}/{META_FILE}")
        fs.pipe(f"{path}/{TENSORS_FILE}", st_save(tensors))
        fs.pipe(f"{path}/{META_FILE}", meta_bytes)
    except OSError as exc:
        raise ArtifactError(f"cannot write model artifact to {url}: {exc}") from exc
    return url


# -- checking before reading ------------------------------------------------------------
# A model directory may come from anywhere (a shared bucket, a hand edit). Nothing is read
# whole until its size is known to be what the files declare: model.json has a bound, the
# safetensors header has a bound and is read first, and every tensor's dtype, shape and
# byte range must agree with each other, with model.json and with the file's size.

MAX_META_BYTES = 64 * 2**20  # model.json holds a config and a loss history: KBs
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on a header
# The dtypes safetensors.numpy loads, and their sizes in bytes.
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "F16": 2, "U32": 4, "I32": 4,
    "F32": 4, "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
FLOAT_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}  # safetensors is little-endian
# What a model cannot be built without (model.json fields).
REQUIRED_FIELDS = ("method", "n_features", "beta", "alpha", "steps", "metric")


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the safetensors header declares it."""

    dtype: str
    shape: tuple[int, ...]
    start: int  # byte range in the data section (after the length and the header)
    end: int


@dataclass
class CheckedArtifact:
    """An artifact that passed every check ``load_artifact`` makes: model.json's fields,
    the tensors the file declares and both files' sizes in bytes."""

    url: str
    meta: dict
    tensors: dict[str, TensorEntry]
    file_bytes: dict[str, int]


def check_artifact(url: str, storage_options: dict | None = None) -> CheckedArtifact:
    """Every check of ``load_artifact`` without loading: raises ArtifactError naming the
    file and the mismatch. Reads model.json, the safetensors header and the prototypes'
    bytes, each bounded; `inspect` uses it so that it refuses what a load refuses."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return check_artifact_at(fs, path, url)


def check_artifact_at(fs, path: str, url: str) -> CheckedArtifact:
    """``check_artifact`` on an open filesystem (``path`` in it, ``url`` for messages)."""
    meta, meta_bytes = read_meta(fs, path, url)
    tensor_path, where = f"{path}/{TENSORS_FILE}", f"{url}/{TENSORS_FILE}"
    size = _file_size(fs, tensor_path, where, f"{url}: {TENSORS_FILE} is missing")
    data_offset, entries = _read_header(fs, tensor_path, where, size)
    _check_declared(url, meta, entries)
    protos = entries["prototypes"]
    raw = _read_range(fs, tensor_path, where, data_offset + protos.start, data_offset + protos.end)
    values = np.frombuffer(raw, dtype=FLOAT_DTYPES[protos.dtype])
    if not np.isfinite(values).all():
        raise ArtifactError(f"{where}: prototypes contain NaN/inf")
    return CheckedArtifact(url, meta, entries, {META_FILE: meta_bytes, TENSORS_FILE: size})


def read_meta(fs, path: str, url: str) -> tuple[dict, int]:
    """model.json (bounded) with its format marker and version checked; and its size."""
    where = f"{url}/{META_FILE}"
    missing = f"{url}: no {META_FILE}: not a clam-dist model directory (or an incomplete save)"
    size = _file_size(fs, f"{path}/{META_FILE}", where, missing)
    if size > MAX_META_BYTES:
        raise ArtifactError(
            f"{where}: {size} bytes, more than a clam-dist model.json ever holds "
            f"({MAX_META_BYTES} at most): not a clam-dist model"
        )
    raw = _read_range(fs, f"{path}/{META_FILE}", where, 0, size)
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{where}: not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{url}: {META_FILE} is not a clam-dist model (format marker missing)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{url}: unsupported format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    return meta, size


def _file_size(fs, path: str, where: str, missing: str) -> int:
    try:
        return int(fs.size(path))
    except FileNotFoundError as exc:
        raise ArtifactError(missing) from exc
    except OSError as exc:
        raise ArtifactError(f"{where}: cannot read: {exc}") from exc


def _read_range(fs, path: str, where: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of a file, which must all be there."""
    try:
        raw = fs.cat_file(path, start=start, end=end)
    except OSError as exc:
        raise ArtifactError(f"{where}: cannot read: {exc}") from exc
    if len(raw) != end - start:  # shorter than its size said: replaced while we read
        raise ArtifactError(f"{where}: corrupt safetensors file: changed while being read")
    return raw


def _corrupt(where: str, why: str) -> ArtifactError:
    return ArtifactError(f"{where}: corrupt safetensors file: {why}")


def _read_header(fs, path: str, where: str, size: int) -> tuple[int, dict[str, TensorEntry]]:
    """(offset of the data section, {name: entry}) from a safetensors file of ``size``
    bytes: an 8-byte little-endian header length, a JSON header, then the data."""
    if size < 8:
        raise _corrupt(where, f"{size} bytes, too short to hold a header")
    n = int.from_bytes(_read_range(fs, path, where, 0, 8), "little")
    if not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
        raise _corrupt(
            where,
            f"its header length says {n} bytes, but the file has {size} bytes "
            f"(a header is 2 to {MAX_HEADER_BYTES} bytes)",
        )
    try:
        header = json.loads(_read_range(fs, path, where, 8, 8 + n))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _corrupt(where, f"its header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise _corrupt(where, "its header is not a JSON object")
    entries = {
        name: _entry(where, name, spec) for name, spec in header.items() if name != "__metadata__"
    }
    _check_layout(where, entries, size - 8 - n)
    return 8 + n, entries


def _entry(where: str, name: str, spec) -> TensorEntry:
    """One header entry, its byte range matching its dtype and shape."""
    if not isinstance(spec, dict):
        raise _corrupt(where, f"tensor {name!r} is not described by a JSON object")
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise _corrupt(where, f"tensor {name!r} has an unknown dtype {dtype!r}")
    if not (isinstance(shape, list) and all(_count(s) for s in shape)):
        raise _corrupt(where, f"tensor {name!r} has an invalid shape {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(_count(o) for o in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise _corrupt(where, f"tensor {name!r} has invalid data_offsets {offsets!r}")
    need = math.prod(shape) * DTYPE_BYTES[dtype]  # Python ints: no overflow at 10^12
    if offsets[1] - offsets[0] != need:
        raise _corrupt(
            where,
            f"tensor {name!r} ({dtype} {shape}) needs {need} bytes, its data_offsets "
            f"span {offsets[1] - offsets[0]}",
        )
    return TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(where: str, entries: dict[str, TensorEntry], data_bytes: int) -> None:
    """The tensors tile the data section exactly: no overlap, no gap, nothing past the
    end of the file (a header claiming a 4 TB tensor in a small file stops here)."""
    end = 0
    for name, e in sorted(entries.items(), key=lambda item: (item[1].start, item[1].end)):
        if e.start != end:
            raise _corrupt(where, f"tensor {name!r} starts at byte {e.start}, expected {end}")
        end = e.end
    if end != data_bytes:
        raise _corrupt(
            where,
            f"its tensors declare {end} bytes of data, the file holds {data_bytes} "
            "(truncated, padded or forged)",
        )


def _check_declared(url: str, meta: dict, entries: dict[str, TensorEntry]) -> None:
    """model.json's numbers must describe the tensors and be usable: a hand-edited or
    mismatched file is refused here, not found out inside the assignment's workers."""
    where = f"{url}/{META_FILE}"
    for key in REQUIRED_FIELDS:
        if key not in meta:
            raise ArtifactError(f"{url}: {META_FILE} lacks field {key!r}")
    if meta["method"] not in methods.names():
        raise ArtifactError(
            f"{where}: method must be one of {list(methods.names())}, got {meta['method']!r}"
        )
    protos = entries.get("prototypes")
    if protos is None or len(protos.shape) != 2 or protos.dtype not in FLOAT_DTYPES:
        raise ArtifactError(f"{url}/{TENSORS_FILE}: no 2-D floating-point 'prototypes' tensor")
    if protos.shape[0] == 0:
        raise ArtifactError(f"{url}/{TENSORS_FILE}: 'prototypes' has no rows (k = 0)")
    n_features = meta["n_features"]
    if not (_count(n_features) and n_features >= 1):
        raise ArtifactError(f"{where}: n_features must be an integer >= 1, got {n_features!r}")
    checks = [
        ("k", meta.get("k"), protos.shape[0], "the prototypes' rows"),
        ("d_model", meta.get("d_model"), protos.shape[1], "the prototypes' columns"),
    ]
    for name in ("scaler_mean", "scaler_scale"):
        if name in entries:
            checks.append(("n_features", n_features, math.prod(entries[name].shape), name))
    for field_name, said, found, what in checks:
        if said is not None and said != found:
            raise ArtifactError(
                f"{where}: {field_name} = {said}, but {what} say {found} (mismatched files?)"
            )
    expected = meta.get("tensor_shapes", {})
    found_shapes = {name: list(e.shape) for name, e in entries.items()}
    if expected != found_shapes:
        raise ArtifactError(f"{url}: tensors {found_shapes} do not match the metadata {expected}")
    _check_dynamics(where, meta)


def _check_dynamics(where: str, meta: dict) -> None:
    beta, alpha, steps = meta["beta"], meta["alpha"], meta["steps"]
    if not (isinstance(beta, int | float) and math.isfinite(beta) and beta > 0):
        raise ArtifactError(f"{where}: beta must be a finite number > 0, got {beta!r}")
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0):
        raise ArtifactError(f"{where}: alpha must be a finite number > 0, got {alpha!r}")
    if not (isinstance(steps, int) and steps >= 0):
        raise ArtifactError(f"{where}: steps must be an integer >= 0, got {steps!r}")


def load_artifact(url: str, storage_options: dict | None = None) -> ModelArtifact:
    """Read and validate an artifact directory written by ``save_artifact``: every check
    of ``check_artifact`` first, so only a file of the size it declares is read whole."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    checked = check_artifact_at(fs, path, url)
    meta, where = checked.meta, f"{url}/{TENSORS_FILE}"
    raw = _read_range(fs, f"{path}/{TENSORS_FILE}", where, 0, checked.file_bytes[TENSORS_FILE])
    try:
        tensors = st_load(raw)
    except (SafetensorError, ValueError) as exc:
        raise _corrupt(where, str(exc)) from exc
    if {n: list(t.shape) for n, t in tensors.items()} != meta.get("tensor_shapes", {}):
        raise _corrupt(where, "changed while being read")
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
