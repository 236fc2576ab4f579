"""`clam-dist inspect PATH`: say what a clam-dist path holds, read-only.

Five things are recognised, on any fsspec URL:

- a model artifact (``model.json`` + ``model.safetensors``, clam_dist.artifacts);
- a pipeline run directory (``stages/<stage>.json`` markers, ``summary.json``,
  clam_dist.pipeline.stages);
- a training run folder, ``<run.storage_path>/<run.name>`` as `clam-dist train` writes
  it (``run-config.json``, ``checkpoint_*/``, ``model/``, clam_dist.train.run_record);
- a data set written by `clam-dist make-dataset` and an assignment output prefix (both
  ``part-NNNNN.parquet``, ``_manifest.json``, ``_SUCCESS``, clam_dist.assign.commit; the
  manifest's ``writer`` tells them apart).

Only metadata is read (JSON files, listings, sizes, a safetensors header, a Parquet
footer's schema, a model's prototypes), each read bounded; nothing is written or deleted,
so inspecting a path a job is writing is harmless. A model is checked exactly as
``load_artifact`` checks it (``check_artifact``): what a load would refuse is refused here,
with the reason. Fields an artifact does not need (older versions wrote fewer) show as
"not recorded" rather than failing. Anything else is refused with one line on stderr and
exit code 2.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from clam_dist import methods
from clam_dist.artifacts import (
    META_FILE,
    TENSORS_FILE,
    ArtifactError,
    CheckedArtifact,
    check_artifact_at,
)
from clam_dist.assign.commit import MANIFEST, STAGING, SUCCESS
from clam_dist.logs import redact

# part-00000.parquet, or part-<attempt>-00000.parquet after an overwrite
PART_RE = re.compile(r"part-(?:[\w-]+-)?\d{5}\.parquet")

NOT_RECORDED = "not recorded"
SUMMARY = "summary.json"
STAGES_DIR = "stages"
MODEL_DIR = "model"  # a training run's model artifact, beside its checkpoints
CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train's checkpoint folders in a run folder
EXPECTED = (
    "expected a model artifact (model.json + model.safetensors), a pipeline run directory "
    "(stages/, summary.json), a training run folder (run-config.json, checkpoint_*/) or a "
    "data set or assignment output (_SUCCESS, _manifest.json, part-*.parquet)"
)
EXIT_UNRECOGNISED = 2


class InspectError(ValueError):
    """The path is missing, unreadable or not a clam-dist artifact, run or output."""


@dataclass
class Report:
    """What was found: ``rows`` (label, value) for people, ``table`` (header + rows) for
    per-stage listings, ``data`` for --json. Values are already strings in ``rows``."""

    kind: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    table: list[list[str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, label: str, value: Any, key: str | None = None, raw: Any = None) -> None:
        """One field: shown as ``label``, stored in ``data[key]`` (None = not recorded)."""
        # Paths and URLs may carry user:password@ (redact masks it, as the logs do).
        self.rows.append((label, redact(_text(value))))
        if key is not None:
            self.data[key] = value if raw is None else raw


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        help="model directory, pipeline run directory, training run folder, data set or "
        "assignment output (any URL)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print machine-readable JSON instead of the table"
    )
    parser.add_argument(
        "--storage-options",
        default=None,
        metavar="JSON",
        help="fsspec storage options as a JSON object, e.g. '{\"anon\": true}'",
    )
    parser.add_argument(
        "--endpoint-url",
        default=None,
        help="S3-compatible endpoint for s3:// URLs (credentials: the standard AWS chain)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        options = storage_options_from_args(args.storage_options, args.endpoint_url)
        report = inspect_path(args.path, options)
    except InspectError as exc:
        # One line, no traceback: a scheduler's log shows exactly what was wrong.
        print(f"clam-dist inspect: {redact(str(exc))}", file=sys.stderr)
        return EXIT_UNRECOGNISED
    if args.json:
        print(json.dumps(redact(report.data), indent=2, sort_keys=True, default=str))
    else:
        print(render(report))
    return 0


def storage_options_from_args(text: str | None, endpoint_url: str | None) -> dict:
    options: dict = {}
    if text:
        try:
            options = json.loads(text)
        except ValueError as exc:
            raise InspectError(f"--storage-options is not valid JSON: {exc}") from exc
        if not isinstance(options, dict):
            raise InspectError(
                f"--storage-options must be a JSON object, got {type(options).__name__}"
            )
    if endpoint_url:
        # Same place assign/evaluate put it (normalize_storage_options keeps it there).
        client = dict(options.get("client_kwargs") or {}, endpoint_url=endpoint_url)
        options = dict(options, client_kwargs=client)
    return options


# -- detection ------------------------------------------------------------------------


class _Reader:
    """Read-only access to one folder: names in it, sizes, small JSON files."""

    def __init__(self, url: str, storage_options: dict):
        from clam_dist.data.errors import DataError
        from clam_dist.data.source import open_filesystem

        self.url = url.rstrip("/") or url
        try:
            self.fs, path = open_filesystem(self.url, storage_options)
        except DataError as exc:
            raise InspectError(str(exc)) from exc
        self.path = path.rstrip("/") or path

    def _call(self, what: str, fn):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - any backend error (permission, connection,
            # botocore's parameter validation) means "cannot read here": one line, no traceback
            raise _unreadable(what, exc) from exc

    def artifact(self, sub: str = "") -> CheckedArtifact:
        """The model artifact in the folder (or its sub-folder), checked as
        ``load_artifact`` checks it; ArtifactError says why a load would refuse it."""
        path = f"{self.path}/{sub}" if sub else self.path
        try:
            return check_artifact_at(self.fs, path, self._url(sub))
        except ArtifactError:
            raise
        except Exception as exc:  # noqa: BLE001 - as in _call
            raise _unreadable(self._url(sub), exc) from exc

    def schema_names(self, name: str) -> list[str]:
        """Column names of a Parquet file, from its footer (no data is read)."""
        import pyarrow.parquet as pq

        def read() -> list[str]:
            with self.fs.open(f"{self.path}/{name}", "rb") as f:
                return list(pq.read_schema(f).names)

        return self._call(self._url(name), read)

    def listing(self, sub: str = "") -> dict[str, dict]:
        """{name: info} of the entries directly under the folder (or its sub-folder)."""
        path = f"{self.path}/{sub}" if sub else self.path
        entries = self._call(self._url(sub), lambda: self.fs.ls(path, detail=True))
        return {posixpath.basename(e["name"].rstrip("/")): e for e in entries}

    def kind(self) -> str:
        """'missing', 'file' or 'dir'."""
        if not self._call(self.url, lambda: self.fs.exists(self.path)):
            return "missing"
        return "dir" if self._call(self.url, lambda: self.fs.isdir(self.path)) else "file"

    def json(self, name: str) -> Any:
        raw = self._call(self._url(name), lambda: self.fs.cat(f"{self.path}/{name}"))
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InspectError(f"{self._url(name)}: not valid JSON ({exc})") from exc

    def _url(self, name: str) -> str:
        return f"{self.url}/{name}" if name else self.url


def _unreadable(what: str, exc: Exception) -> InspectError:
    if isinstance(exc, FileNotFoundError):
        return InspectError(f"{what}: does not exist; {EXPECTED}")
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return InspectError(f"{what}: cannot read ({type(exc).__name__}: {first})")


def inspect_path(url: str, storage_options: dict | None = None) -> Report:
    """Recognise what ``url`` holds and describe it; raises InspectError otherwise."""
    reader = _Reader(url, storage_options or {})
    kind = reader.kind()
    if kind == "missing":
        raise InspectError(f"{url}: does not exist; {EXPECTED}")
    if kind == "file":
        raise InspectError(f"{url}: is a file, not a folder; {EXPECTED}")
    names = reader.listing()
    if META_FILE in names:
        report = _model(reader, names)
    elif SUMMARY in names or STAGES_DIR in names:
        report = _run_dir(reader, names)
    elif _is_prefix(names):
        report = _prefix(reader, names)
    elif TENSORS_FILE in names:
        raise InspectError(
            f"{url}: {TENSORS_FILE} without {META_FILE}: an incomplete model save "
            "(the JSON is written last)"
        )
    elif _is_training_run(names):  # last: its check imports the trainer's modules (torch)
        report = _training_run(reader, names)
    else:
        more = f" (+{len(names) - 5} more)" if len(names) > 5 else ""
        shown = (", ".join(sorted(names)[:5]) + more) or "nothing"
        raise InspectError(f"{url}: holds {shown}; {EXPECTED}")
    report.data = {"path": url, "kind": report.kind, **report.data}
    return report


# -- model artifacts --------------------------------------------------------------------


def _model(reader: _Reader, names: dict[str, dict]) -> Report:
    try:
        checked = reader.artifact()
    except ArtifactError as exc:
        # What assign, evaluate or train would refuse is refused here, with their reason.
        raise InspectError(f"refused: {exc}") from exc
    meta = checked.meta
    extra = meta.get("meta") if isinstance(meta.get("meta"), dict) else {}
    config = extra.get("config") if isinstance(extra.get("config"), dict) else {}
    params = extra.get("params") if isinstance(extra.get("params"), dict) else {}
    r = Report("model artifact")
    r.add("path", reader.url)
    r.add("kind", "model artifact")
    r.add("status", "complete", "status")
    r.data["complete"] = True
    r.add("method", meta.get("method"), "method")
    r.add("k (clusters)", meta.get("k"), "k")
    r.add("d (model space)", meta.get("d_model"), "d")
    r.add("input features", meta.get("n_features"), "n_features")
    r.add("beta", meta.get("beta"), "beta")
    r.add("alpha", meta.get("alpha"), "alpha")
    steps = meta.get("steps")
    shown_steps = "0 (nearest prototype, no dynamics)" if steps == 0 else steps
    r.add("T (AM steps)", shown_steps, "am_steps", steps)
    r.add("metric", meta.get("metric"), "metric")
    for row in methods.get(meta["method"]).inspect_rows(extra):  # the method's own fields
        r.add(row.label, row.shown, row.key, row.value)
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    r.add("training data", data.get("url"), "training_data")
    r.add("trained with", extra.get("trained_with"), "trained_with")
    r.add("rows seen", _rows_seen(extra), "rows_seen")
    optim = config.get("optim") if isinstance(config.get("optim"), dict) else {}
    r.add("epochs", optim.get("epochs", params.get("epochs")), "epochs")
    losses = extra.get("loss_history")
    final_loss = losses[-1] if isinstance(losses, list) and losses else None
    r.add("final loss", final_loss, "final_loss")
    p99 = extra.get("energy_p99")
    shown_p99 = p99
    if p99 is not None and extra.get("energy_p99_sample") is not None:
        shown_p99 = f"{_text(p99)} (on {extra['energy_p99_sample']} training rows)"
    r.add("energy p99", shown_p99, "energy_p99", p99)
    r.add("library version", meta.get("library_version"), "library_version")
    r.add("format version", meta.get("format_version"), "format_version")
    shapes = meta.get("tensor_shapes") if isinstance(meta.get("tensor_shapes"), dict) else None
    shown_shapes = None
    if shapes is not None:
        shown_shapes = ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in sorted(shapes.items()))
    r.add("tensors", shown_shapes, "tensor_shapes", shapes)
    sizes = checked.file_bytes
    shown_sizes = ", ".join(f"{n} {_bytes(s)}" for n, s in sizes.items())
    r.add("file sizes", shown_sizes, "file_bytes", sizes)
    return r


def _rows_seen(extra: dict) -> int | None:
    """Rows the model was trained on, where recorded: an explicit count, or the in-memory
    sample's size (the distributed trainer records neither today)."""
    for key in ("rows_seen", "train_sample_size"):
        value = extra.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


# -- pipeline run directories -------------------------------------------------------------


def _run_dir(reader: _Reader, names: dict[str, dict]) -> Report:
    from clam_dist.pipeline.stages import STAGES

    summary = reader.json(SUMMARY) if SUMMARY in names else None
    if summary is not None and not isinstance(summary, dict):
        raise InspectError(f"{reader.url}/{SUMMARY}: expected a JSON object")
    markers: dict[str, Any] = {}
    if STAGES_DIR in names:
        for name in sorted(reader.listing(STAGES_DIR)):
            if name.endswith(".json"):  # a .tmp is a marker being written: not finished
                markers[name[: -len(".json")]] = reader.json(f"{STAGES_DIR}/{name}")
    r = Report("pipeline run")
    r.add("path", reader.url)
    r.add("kind", "pipeline run directory")
    status = summary.get("status") if summary else None
    shown = status or f"unknown (no {SUMMARY}: still running, or killed before the end)"
    r.add("status", shown, "status", status)
    if summary and summary.get("error"):
        r.add("error", str(summary["error"]).splitlines()[0], "error", summary["error"])
    seconds = summary.get("seconds") if summary else None
    r.add("seconds", seconds, "seconds")
    timings = summary.get("timings_s") if summary else None
    if isinstance(timings, dict) and "ray_init" in timings:
        r.add("ray init seconds", timings["ray_init"], "ray_init_seconds")
    model_cfg = ((summary or {}).get("config") or {}).get("model") or {}
    if model_cfg:
        r.add(
            "model config",
            f"method={model_cfg.get('method')} k={model_cfg.get('n_clusters')} "
            f"trainer={model_cfg.get('trainer')}",
            "model_config",
            model_cfg,
        )
    in_summary = (summary or {}).get("stages") or {}
    stages: dict[str, dict] = {}
    r.table.append(["stage", "status", "seconds", "outputs"])
    for stage in [*STAGES, *sorted(set(markers) - set(STAGES))]:
        record = markers.get(stage)
        if isinstance(record, dict):
            state = "done (earlier run)" if in_summary.get(stage, {}).get("skipped") else "done"
        else:
            state, record = "not done", {}
        outputs = _outputs(record)
        r.table.append(
            [stage, state, _text(record.get("seconds"), missing="-"), _join(outputs) or "-"]
        )
        stages[stage] = {"status": state, "seconds": record.get("seconds"), "outputs": outputs}
    r.data["stages"] = stages
    return r


# Scalar fields of a stage record that are bookkeeping, not outputs.
_NOT_OUTPUTS = {"seconds", "skipped", "timings_s", "report_files", "metrics"}
# Evaluate's headline metrics (its record holds many more, and the plots' data).
_HEADLINE_METRICS = ("silhouette", "nmi", "ari", "acc", "inertia_per_row")


def _outputs(record: dict) -> dict[str, Any]:
    out = {
        k: v
        for k, v in record.items()
        if k not in _NOT_OUTPUTS and (v is None or isinstance(v, (str, int, float, bool)))
    }
    metrics = record.get("metrics")
    if isinstance(metrics, dict):
        for name in _HEADLINE_METRICS:
            if isinstance(metrics.get(name), (int, float)):
                out[name] = metrics[name]
    return out


# -- data sets and assignment outputs (one commit protocol) --------------------------------


def _is_prefix(names: dict[str, dict]) -> bool:
    from clam_dist.commands.make_dataset import CENTERS

    markers = (SUCCESS, MANIFEST, STAGING, CENTERS)
    return any(m in names for m in markers) or any(PART_RE.fullmatch(n) for n in names)


def _prefix(reader: _Reader, names: dict[str, dict]) -> Report:
    """A data set or an assignment output: the manifest's writer says which (a manifest
    from before the writer field was an assignment's)."""
    from clam_dist.commands.make_dataset import CENTERS, WRITER

    manifest = None
    if MANIFEST in names:
        manifest = reader.json(MANIFEST)
        if not isinstance(manifest, dict):
            raise InspectError(f"{reader.url}/{MANIFEST}: expected a JSON object")
    writer = (manifest or {}).get("writer")
    if writer == WRITER or (manifest is None and CENTERS in names):
        return _dataset(reader, names, manifest)
    return _assignments(reader, names, manifest)


def _status(r: Report, reader: _Reader, names: dict[str, dict], manifest: dict | None) -> bool:
    """The commit status row; for an uncommitted prefix, what an interrupted attempt left
    (the next run of the command clears it). Returns whether it is committed."""
    committed = SUCCESS in names
    r.add(
        "status", "committed" if committed else f"incomplete (no {SUCCESS})", "committed", committed
    )
    if not committed:
        parts = sorted(n for n in names if PART_RE.fullmatch(n))
        r.add("part files present", len(parts), "part_files_present")
        r.add("manifest", "present" if MANIFEST in names else "absent")
        r.add(
            "staging folder",
            "present" if STAGING in names else "absent",
            "staging",
            STAGING in names,
        )
        r.data["manifest"] = None
        return False
    if manifest is None:
        raise InspectError(
            f"{reader.url}: {SUCCESS} present but {MANIFEST} missing: a broken commit"
        )
    return True


def _files(r: Report, names: dict[str, dict], manifest: dict, default_writer: str) -> list[str]:
    """Rows, files, size, missing files and commit time of a committed prefix; returns
    the part files."""
    r.add("written by", manifest.get("writer", default_writer), "writer")
    files = manifest.get("files") if isinstance(manifest.get("files"), list) else []
    missing = [f for f in files if f not in names]
    r.add("rows", manifest.get("rows"), "rows")
    r.add("files", len(files) if files else None, "files")
    r.add("size", _bytes(sum(names[f].get("size") or 0 for f in files if f in names)))
    if missing:
        r.add("missing files", ", ".join(missing), "missing_files", missing)
    r.add("committed at", manifest.get("committed_at"), "committed_at")
    return [f for f in files if f in names]


def _dataset(reader: _Reader, names: dict[str, dict], manifest: dict | None) -> Report:
    from clam_dist.commands.make_dataset import CENTERS, WRITER

    r = Report("data set")
    r.add("path", reader.url)
    r.add("kind", "data set")
    if not _status(r, reader, names, manifest):
        return r
    files = _files(r, names, manifest, WRITER)
    r.add("source", manifest.get("source"), "source")
    r.add("d (dimension)", manifest.get("d"), "d")
    if manifest.get("source") == "mixture":
        r.add("k (components)", manifest.get("k"), "k")
        r.add("separation", manifest.get("separation"), "separation")
        r.add("seed", manifest.get("seed"), "seed")
        r.add("true centres", CENTERS if CENTERS in names else "absent", "centers_file")
    # The manifest does not list the columns; the first file's footer does.
    columns = reader.schema_names(files[0]) if files else None
    r.add("columns", ", ".join(columns) if columns else None, "columns", columns)
    r.data["manifest"] = manifest
    return r


def _assignments(reader: _Reader, names: dict[str, dict], manifest: dict | None) -> Report:
    r = Report("assignment output")
    r.add("path", reader.url)
    r.add("kind", "assignment output")
    if not _status(r, reader, names, manifest):
        return r
    _files(r, names, manifest, "clam-dist assign")
    r.add("model", manifest.get("model"), "model")
    r.add("model method", manifest.get("model_method"), "model_method")
    r.add("k", manifest.get("k"), "k")
    r.add("input", manifest.get("input"), "input")
    r.add("input files", manifest.get("input_files"), "input_files")
    if manifest.get("partition"):
        r.add("partition", manifest["partition"], "partition")
    columns = manifest.get("columns")
    r.add("columns", ", ".join(columns) if isinstance(columns, list) else None, "columns", columns)
    drift = manifest.get("drift") if isinstance(manifest.get("drift"), dict) else {}
    share = drift.get("share_above")
    r.add(
        "drift share > train p99", share if share is not None else drift.get("note"), "drift", drift
    )
    r.data["manifest"] = manifest
    return r


# -- training run folders -----------------------------------------------------------------


def _checkpoints(names: dict[str, dict]) -> list[str]:
    """Ray Train's checkpoint folders, oldest first (checkpoint_<date>_<time> sorts by
    time, as clam_dist.train.run_record reads them)."""
    return sorted(
        n
        for n, e in names.items()
        if n.startswith(CHECKPOINT_PREFIX) and e.get("type") == "directory"
    )


def _is_training_run(names: dict[str, dict]) -> bool:
    from clam_dist.train.run_record import RECORD

    return RECORD in names or bool(_checkpoints(names))


def _training_run(reader: _Reader, names: dict[str, dict]) -> Report:
    from clam_dist.train.run_record import RECORD

    checkpoints = _checkpoints(names)
    latest, state_config = _latest_state(reader, checkpoints[-1]) if checkpoints else (None, {})
    config = _run_config(reader, names, RECORD, state_config)
    model = _RunModel.of(reader, names)
    r = Report("training run")
    r.add("path", reader.url)
    r.add("kind", "training run")
    r.add("name", posixpath.basename(reader.path), "name")
    r.add("status", model.run_status(), "status")
    r.add("method", config.get("model.method"), "method")
    r.add("k (clusters)", config.get("model.n_clusters"), "k")
    r.add("training data", config.get("data.url"), "training_data")
    r.add("epochs", config.get("optim.epochs"), "epochs")
    r.add("workers", config.get("run.num_workers"), "num_workers")
    r.add("checkpoints", len(checkpoints), "checkpoints", checkpoints)
    r.add("latest checkpoint", _shown_checkpoint(latest), "latest_checkpoint", latest)
    r.add("model", model.shown(), "model", model.url)
    r.data["model_status"] = model.status
    if model.status == "refused":
        r.data["model_error"] = model.detail
    r.data["config"] = config
    return r


def _latest_state(reader: _Reader, name: str) -> tuple[dict, dict]:
    """(progress, config) of the newest checkpoint; one still being written has no state
    file yet (both then say nothing)."""
    from clam_dist.train.checkpoint import STATE

    state = reader.json(f"{name}/{STATE}") if STATE in reader.listing(name) else {}
    state = state if isinstance(state, dict) else {}
    position = state.get("data_position") if isinstance(state.get("data_position"), dict) else {}
    progress = {
        "name": name,
        "epoch": position.get("epoch"),
        "step": position.get("step"),
        "global_step": state.get("global_step"),
    }
    config = state.get("config") if isinstance(state.get("config"), dict) else {}
    return progress, config


def _shown_checkpoint(latest: dict | None) -> str | None:
    if latest is None:
        return None
    if latest["epoch"] is None:
        return f"{latest['name']} (progress not recorded yet)"
    return (
        f"{latest['name']} (epoch {latest['epoch']}, step {latest['step']}, "
        f"global step {latest['global_step']})"
    )


def _run_config(
    reader: _Reader, names: dict[str, dict], record_file: str, state_config: dict
) -> dict[str, Any]:
    """``section.field -> value`` of the run: its run-config.json's identity, or for a
    folder of an older clam-dist without one, the newest checkpoint's config."""
    if record_file in names:
        record = reader.json(record_file)
        identity = record.get("identity") if isinstance(record, dict) else None
        if isinstance(identity, dict):
            return identity
    return {
        f"{section}.{key}": value
        for section, fields in state_config.items()
        if isinstance(fields, dict)
        for key, value in fields.items()
    }


@dataclass
class _RunModel:
    """A training run's model artifact, checked as load_artifact checks it."""

    url: str | None
    status: str  # "complete", "refused" or "absent"
    detail: str = ""  # k and d when complete, why when refused

    @classmethod
    def of(cls, reader: _Reader, names: dict[str, dict]) -> _RunModel:
        if MODEL_DIR not in names:
            return cls(None, "absent")
        url = reader._url(MODEL_DIR)
        try:
            checked = reader.artifact(MODEL_DIR)
        except ArtifactError as exc:
            return cls(url, "refused", str(exc))
        k, d = checked.tensors["prototypes"].shape
        return cls(url, "complete", f"k={k}, d={d}")

    def run_status(self) -> str:
        return {
            "complete": "finished (model written)",
            "refused": "model refused (see model)",
            "absent": "no model yet (training, interrupted or failed)",
        }[self.status]

    def shown(self) -> str:
        if self.status == "absent":
            return "not written yet"
        if self.status == "refused":
            return f"refused: {self.detail}"
        return f"{self.url} (complete: {self.detail})"


# -- rendering ------------------------------------------------------------------------


def _text(value: Any, missing: str = NOT_RECORDED) -> str:
    if value is None or value == "":
        return missing
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _join(outputs: dict[str, Any]) -> str:
    return " ".join(f"{k}={_text(v, missing='-')}" for k, v in outputs.items())


def _bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return NOT_RECORDED
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths)), row[-1]]).rstrip() for row in rows
    ]


def render(report: Report) -> str:
    """The human table: aligned label/value lines, then the per-stage table if any."""
    lines = _aligned([list(row) for row in report.rows])
    if report.table:
        lines += ["", *_aligned(report.table)]
    return "\n".join(lines)
