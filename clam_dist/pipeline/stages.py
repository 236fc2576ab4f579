"""Pipeline stages. Each stage writes ``<run_dir>/stages/<name>.json`` when it finishes;
a re-run skips finished stages (unless forced), so the pipeline resumes after a crash and
is idempotent for a scheduler. ``summary.json`` holds per-stage timings and the metrics."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from clam_dist import logs, methods
from clam_dist.assign.commit import ForeignOutputError
from clam_dist.config import ConfigError, to_dict
from clam_dist.data.urls import scheme_of
from clam_dist.errors import JobError, summary_line
from clam_dist.logs import log_event
from clam_dist.memory import release_unused_memory
from clam_dist.pipeline.config import GENERATED_LABEL_COLUMN, PipelineConfig, PipelineData
from clam_dist.pipeline.lock import run_dir_lock
from clam_dist.pipeline.overview import overview
from clam_dist.pipeline.run_store import RunStore
from clam_dist.progress import Console, NullConsole, TrainReports
from clam_dist.secrets import persistable
from clam_dist.sections import OutputsSection, SourceColumns, WorkersSection, values_of
from clam_dist.shared_storage import StorageNotShared

STAGES = ("data", "train", "assign", "evaluate")


# Config fields each stage's output depends on (a stage also depends on every stage
# before it). A marker records their values; a re-run skips the stage only when they are
# unchanged, and refuses (naming the fields) otherwise.
STAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "data": ("data", "seed"),
    "train": ("model", "optim", "train", "seed"),
    "assign": ("assign",),
    "evaluate": ("eval_sample", "seed"),
}


def run_store(config: PipelineConfig) -> RunStore:
    """The run directory (a local folder or a URL) with the pipeline's one storage
    setting, data.storage_options, which reaches every path of the run."""
    if scheme_of(config.run_dir) == "memory":
        # Ray Train and Ray Data write from their own processes: they would never see it.
        raise ConfigError(
            f"run_dir {config.run_dir}: memory:// lives in this process only and Ray's "
            "workers write from theirs; use a local path or object storage (s3://...)"
        )
    return RunStore(config.run_dir, config.data.storage_options)


class Run:
    def __init__(
        self, config: PipelineConfig, console: Console | None = None, store: RunStore | None = None
    ):
        self.config = config
        self.console = console or NullConsole()  # the per-stage view (the CLI's)
        # A local folder (absolute: Ray Train workers run in their own working directory)
        # or object storage, which every node of a cluster sees.
        self.store = store or run_store(config)
        self._refuse_foreign_dir()
        self.store.make()
        # Set by run_pipeline when --fresh / --from-stage asks for these stages again.
        self.rerun_requested: set[str] = set()

    @property
    def dir(self) -> Path:
        """The local run folder (a run in object storage has none: use ``store``)."""
        if not self.store.is_local:
            raise ValueError(f"run_dir {self.store.url} is not a local folder")
        return self.store.local

    def _refuse_foreign_dir(self) -> None:
        """A run directory is ours (it has stages/) or new/empty: stages replace their own
        outputs there, so a folder of other files is never used as one."""
        store = self.store
        if store.is_local:
            if not store.local.exists() or (store.local / "stages").is_dir():
                return
            if not store.local.is_dir():
                raise ForeignOutputError(f"run_dir {store.url} is a file, expected a folder")
        elif store.is_file():
            raise ForeignOutputError(f"run_dir {store.url} is an object, expected a prefix")
        found = store.entries()
        if found and "stages" not in found:
            shown = ", ".join(found[:5]) + (f" (+{len(found) - 5} more)" if len(found) > 5 else "")
            raise ForeignOutputError(
                f"run_dir {store.url} holds {len(found)} entries that clam-dist pipeline did "
                f"not write ({shown}); choose a new or empty --run-dir"
            )

    def inputs(self, stage: str) -> dict:
        """The flattened config fields (credentials removed) ``stage`` depends on,
        upstream stages' included, plus the input files when data.url is given."""
        cfg = persistable(to_dict(self.config))
        fields: dict = {}
        for name in STAGES[: STAGES.index(stage) + 1]:
            for key in STAGE_FIELDS[name]:
                fields.update(_flatten(cfg[key], key))
            # A method's own section ([dcam], named after it) changes its model.
            own = self.config.model.method
            if name == "train" and own in methods.sections():
                fields.update(_flatten(cfg[own], own))
        if self.config.data.url:
            fields["data.files"] = self._input_files_digest()
        return fields

    def _input_files_digest(self) -> str:
        """One value for every input file's content (see input_files)."""
        listing = json.dumps(sorted(self.input_files().items()))
        return "sha256:" + hashlib.sha256(listing.encode()).hexdigest()[:16]

    def input_files(self) -> dict[str, str]:
        """Each input file (its path) -> a fingerprint of its content, computed once per
        run, before any work. Path and size were compared before: a file replaced by other
        data of the same size (and mtime) passed, and the stages reported the old results."""
        if not hasattr(self, "_input_files"):
            source = self.source()
            fs = source.filesystem()
            files = source.files()
            with ThreadPoolExecutor(min(4, len(files))) as pool:  # hashlib drops the GIL
                prints = list(pool.map(lambda f: content_fingerprint(fs, f), files))
            self._input_files = dict(zip(files, prints, strict=True))
        return self._input_files

    def describe_files_change(self, record: dict) -> str | None:
        """Which input files differ from those ``record``'s run read (None when the
        record predates per-file fingerprints)."""
        old: dict[str, str] | None = record.get("input_files")
        if not isinstance(old, dict):
            return None
        new, name = self.input_files(), self.source().file_key
        parts = []
        for label, names in (
            ("content changed", [f for f in new if f in old and old[f] != new[f]]),
            ("new", [f for f in new if f not in old]),
            ("gone", [f for f in old if f not in new]),
        ):
            if names:
                shown = ", ".join(name(f) for f in names[:3]) + (
                    f" (+{len(names) - 3} more)" if len(names) > 3 else ""
                )
                parts.append(f"{label}: {shown}")
        return "; ".join(parts) or None

    def changed(self, stage: str, record: dict) -> dict[str, tuple]:
        """Fields whose value differs from the run that wrote ``record`` (old, new)."""
        old, new = record.get("inputs"), self.inputs(stage)
        if old is None:  # a marker of an older clam-dist: nothing to compare with
            return {"(marker)": ("no recorded config", "current config")}
        return {
            k: (old.get(k), new.get(k))
            for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)
        }

    def done(self, stage: str) -> dict | None:
        return self.store.read_json("stages", f"{stage}.json")

    def forget(self, stage: str) -> None:
        """Remove the stage's marker: it runs again."""
        self.store.delete("stages", f"{stage}.json")

    def finish(self, stage: str, result: dict, seconds: float) -> dict:
        record = dict(result, seconds=round(seconds, 3), inputs=self.inputs(stage))
        if self.config.data.url:  # to name the changed files when a re-run is refused
            record["input_files"] = self.input_files()
        # whole or absent (RunStore.write_text)
        self.store.write_json(record, "stages", f"{stage}.json", default=_json_default)
        return record

    # paths
    @property
    def storage_options(self) -> dict | None:
        return self.config.data.storage_options

    @property
    def data_url(self) -> str:
        return self.config.data.url or self.store.url_of("data")

    @property
    def model_url(self) -> str:
        return self.store.url_of("model")

    @property
    def assignments_url(self) -> str:
        return self.store.url_of("assignments")

    @property
    def report_url(self) -> str:
        return self.store.url_of("report")

    @property
    def events_url(self) -> str:
        return self.store.url_of("logs", "events.jsonl")

    @property
    def data(self) -> PipelineData:
        """The [data] section as the later stages read it: a data set the pipeline
        generated has its labels in GENERATED_LABEL_COLUMN (evaluated as NMI/ARI/ACC)."""
        d = self.config.data
        if d.url or d.label_column is not None:
            return d
        return dataclasses.replace(d, label_column=GENERATED_LABEL_COLUMN)

    def source(self):
        from clam_dist.data.source import VectorSource

        return VectorSource.from_config(self.data_url, self.data)


def _flatten(value, prefix: str) -> dict:
    if isinstance(value, dict):
        out: dict = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
        return out
    return {prefix: value}


def content_fingerprint(fs, path: str) -> str:
    """What changes whenever a file's bytes do. A local file: sha256 of its bytes
    (measured: 32 MB, the default 200k x 32 data set, in 60 ms on one core). The Parquet
    footer is not enough: its statistics are optional and only min/max, so the same rows
    in another order, uncompressed, give a file of the same size with the same footer
    (tests/test_trust_pipeline.py builds one). An object: the checksum the store keeps (S3's ETag, GCS's md5Hash or
    crc32c: a new upload of other bytes gets a new one); else sha256 of its bytes."""
    from clam_dist.data.source import is_local

    if is_local(fs):
        with open(path, "rb") as f:
            return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    info = fs.info(path)
    for key in ("ETag", "etag", "md5Hash", "crc32c", "checksum"):
        if info.get(key):
            return f"{key}:{str(info[key]).strip(chr(34))}:{info.get('size')}"
    with fs.open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def _change(run: Run, record: dict, key: str, old, new) -> str:
    """One changed field for the refusal; the input files by name, not by digest."""
    if key == "data.files" and old is not None and new is not None:
        files = run.describe_files_change(record)
        if files:
            return f"data.files: {files}"
    return f"{key}: {old!r} -> {new!r}"


def check_unchanged(run: Run) -> None:
    """Refuse (before any work) to resume a run directory whose finished stages were
    made with a different config, naming every changed field."""
    problems = []
    for stage in STAGES:
        record = run.done(stage)
        if record is None:
            break  # this stage and every later one re-run anyway
        changed = run.changed(stage, record)
        if changed:
            fields = "; ".join(
                _change(run, record, k, a, b) for k, (a, b) in list(changed.items())[:8]
            )
            problems.append(f"stage {stage} ({fields})")
            break  # later stages depend on this one: listing them adds nothing
    if problems:
        raise ConfigError(
            f"run_dir {run.store.url} holds a run made with a different config or input data: "
            f"{problems[0]}; "
            "pass --fresh to re-run every stage, --from-stage STAGE, or use another --run-dir"
        )


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def stage_data(run: Run) -> dict:
    """Generate the data set (when no url is given) and validate the source."""
    from clam_dist.commands.make_dataset import write_mixture, write_paper_dataset
    from clam_dist.data.stats import validate

    d = run.config.data
    if not d.url:
        # overwrite: a crashed earlier attempt's data set (ours, recorded) is replaced;
        # anything else found there is refused, never removed.
        if d.generate == "mixture":
            write_mixture(
                run.data_url,
                d.n,
                d.d,
                d.k,
                d.separation,
                run.config.seed,
                d.rows_per_file,
                storage_options=run.storage_options,
                overwrite=True,
            )
        else:
            write_paper_dataset(
                run.data_url,
                d.generate,
                d.rows_per_file,
                storage_options=run.storage_options,
                overwrite=True,
            )
    report = validate(run.source())
    report.raise_if_bad()
    return {
        "url": run.data_url,
        "rows": report.rows,
        "files": len(report.widths),
        "dim": next(iter(report.widths.values())),
    }


def stage_train(run: Run) -> dict:
    """Train on every row with Ray Train (default) or on a uniform sample in memory. The
    artifact carries the scaler and the training energy's 99th percentile (the drift
    threshold for later assignments) and the loss curve."""
    from clam_dist.artifacts import load_artifact, save_artifact
    from clam_dist.data.stats import feature_stats

    trainer = run.config.train.trainer
    source = run.source()
    if trainer == "ray" and run.config.model.coarse_clusters is not None:
        artifact = _train_two_level_cells(run, feature_stats(source))
    elif trainer == "ray":
        artifact = _train_with_ray(run)
    else:
        artifact = _train_on_sample(run, feature_stats(source))
    # both trainers recorded the drift threshold; read back: what later stages will load
    save_artifact(artifact, run.model_url, run.storage_options)
    load_artifact(run.model_url, run.storage_options)
    record = {
        "model": run.model_url,
        "trainer": trainer,
        "beta": artifact.beta,
        "final_loss": (artifact.meta.get("loss_history") or [None])[-1],
    }
    if artifact.meta.get("workers"):  # the Ray trainer: rows and seconds per node
        from clam_dist.train.trainer import per_node

        record["per_node"] = per_node(artifact.meta["workers"])
    if artifact.meta.get("cells"):  # the two-level job: cells per node, trained/resumed
        cells = artifact.meta["cells"]
        record["per_node"] = cells["per_node"]
        record["cells"] = {k: v for k, v in cells.items() if k != "per_node"}
    return record


def train_attempt(run: Run) -> str:
    """The Ray Train run name (its checkpoint folder under run_dir/checkpoints) for this
    train stage: the recorded one when the last attempt had the same inputs and no
    re-run was asked for (a crashed run resumes from its checkpoints), else a new,
    unused name. Ray Train restores any run whose folder holds a checkpoint, so reusing
    one name made --fresh or a changed config resume the OLD training (a 10M-row
    --fresh run "trained" in 60 s from a 3-epoch checkpoint of another code version).
    Old folders are left in place (never deleted), only no longer resumed."""
    store = run.store
    record = store.read_json("checkpoints", "train-attempt.json")
    # The same comparison as the stage markers' (Run.changed): the recorded inputs.
    if record and not run.changed("train", record) and "train" not in run.rerun_requested:
        return record["name"]
    name, n = "train", 1
    taken = set(store.entries("checkpoints"))
    while name in taken:
        n += 1
        name = f"train-{n}"
    record = {"name": name, "inputs": run.inputs("train")}
    store.write_json(record, "checkpoints", "train-attempt.json", default=_json_default)
    if n > 1:
        log_event("train_new_attempt", name=name, previous=record and record.get("name"))
    return name


def _train_with_ray(run: Run):
    from clam_dist.artifacts import load_artifact
    from clam_dist.train.config import TrainConfig, TrainData, TrainRun
    from clam_dist.train.trainer import run_training

    cfg, d = run.config, run.data
    # The shared sections are handed on whole; only where the run lives is the stage's.
    tc = TrainConfig(
        data=TrainData(**dict(values_of(TrainData, d), url=run.data_url)),
        model=cfg.model,
        dcam=cfg.dcam,
        optim=cfg.optim,
        run=TrainRun(
            name=train_attempt(run),
            storage_path=run.store.url_of("checkpoints"),
            seed=cfg.seed,
            checkpoint_every=1,
            **values_of(WorkersSection, cfg.train),
        ),
    )
    with TrainReports(run.console) as reports:  # step/epoch/loss onto the driver's view
        result = run_training(tc, progress_queue=reports.queue)
    return load_artifact(result.artifact_url, d.storage_options)


def _global_scaler(run: Run, stats, sample_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's scaler: the training job's rule (data.standardize) on the data's
    statistics and the run's sample."""
    from clam_dist.train.sources import scaler

    return scaler(stats, run.config.data.standardize, sample_x)


def _train_two_level_cells(run: Run, stats):
    """Two levels on every row, distributed (clam_dist/train/cells.py): coarse k-means on
    a sample (the faiss recipe: at most 256 rows per cell), every row shuffled into its
    cell's files, then one Ray task per cell fits the method's fine prototypes. Cells and
    coarse centres are checkpointed under the train attempt's folder, so a resumed stage
    retrains only the cells not finished."""
    from types import SimpleNamespace

    from clam_dist.data.cell_shards import CellShards
    from clam_dist.data.stats import sample_rows
    from clam_dist.estimator_base import AGREEMENT_ROWS
    from clam_dist.models.predictor import drift_threshold
    from clam_dist.models.two_level import COARSE_ROWS_PER_CELL, fit_coarse
    from clam_dist.train.cells import EstimatorCellFit, RowSpace, train_two_level

    cfg, m = run.config, run.config.model
    k, k1 = int(m.n_clusters), int(m.coarse_clusters)
    source = run.source()
    sample = sample_rows(source, max(cfg.data.init_sample, COARSE_ROWS_PER_CELL * k1), cfg.seed)
    mean, scale = _global_scaler(run, stats, sample.x)
    space = RowSpace(mean, scale, spherical=getattr(m, "metric", "euclidean") == "spherical")
    z = space(sample.x)
    shards = CellShards(
        run.store.url_of("checkpoints", train_attempt(run), "cells"), run.storage_options
    )
    coarse = shards.read_coarse()
    if coarse is None:
        coarse = fit_coarse(z, k1, cfg.seed)
        shards.write_coarse(coarse)
    template = methods.get(m.method).load_hooks().make_estimator(cfg)

    def progress(done: int, total: int, unit: str, cells: str) -> None:
        run.console.update(done=done, total=total, unit=unit, cells=cells or None)

    result = train_two_level(
        source, space, coarse, shards, k, cfg.seed, EstimatorCellFit(template), progress
    )
    est = template._adopt_two_level(
        result.model, [SimpleNamespace(**info) for info in result.infos], z[:AGREEMENT_ROWS]
    )
    meta = {
        "trained_with": "two-level cells",
        "train_sample_size": int(len(sample)),
        "cells": {
            "coarse_clusters": k1,
            "nonempty": int(np.count_nonzero(result.cell_rows)),
            "largest_rows": int(result.cell_rows.max()),
            "smallest_rows": int(result.cell_rows[result.cell_rows > 0].min()),
            "trained": len(result.trained),
            "resumed": len(result.resumed),
            "seconds": result.seconds,
            "per_node": result.per_node,
        },
    }
    art = est.to_artifact(scaler_mean=mean, scaler_scale=scale, meta=meta)
    art.meta.update(drift_threshold(art, sample.x))
    return art


def _train_on_sample(run: Run, stats):
    from clam_dist.data.stats import sample_rows
    from clam_dist.models.predictor import drift_threshold

    cfg, d = run.config, run.config.data
    hooks = methods.get(cfg.model.method).load_hooks()
    sample = sample_rows(run.source(), d.init_sample, cfg.seed)
    mean, scale = _global_scaler(run, stats, sample.x)
    z = ((sample.x - mean) / scale).astype(np.float32)
    est = hooks.fit_on_sample(cfg, z)
    meta = dict(hooks.estimator_history(est))
    meta.update(train_sample_size=int(len(sample)), trained_with="in-memory sample")
    # One signature for every estimator (estimator_base): the pipeline's global scaler.
    art = est.to_artifact(scaler_mean=mean, scaler_scale=scale, meta=meta)
    art.meta.update(drift_threshold(art, sample.x))  # on the rows it was trained on
    return art


def stage_assign(run: Run) -> dict:
    from clam_dist.assign.pipeline import AssignConfig, run_assignment

    res = run_assignment(
        AssignConfig(
            input=run.data_url,
            output=run.assignments_url,
            model=run.model_url,
            overwrite=True,  # the stage owns this prefix; a finished stage is never re-run unforced
            **values_of(SourceColumns, run.data),
            **values_of(OutputsSection, run.config.assign),
        )
    )
    return {
        "output": res.output,
        "rows": res.rows,
        "files": res.files,
        "rows_per_second": res.rows_per_second,
        "drift_share_above_train_energy_p99": res.drift_share,
        "timings_s": res.timings_s,
        "per_node": res.per_node,  # tasks, rows and seconds of the assignment per node
    }


def stage_evaluate(run: Run) -> dict:
    from clam_dist.evaluate.metrics_at_scale import EvalConfig, evaluate_run
    from clam_dist.evaluate.report import write_report

    timings: dict[str, float] = {}
    metrics, plots = evaluate_run(
        EvalConfig(
            run.source(),
            run.assignments_url,
            run.model_url,
            run.config.eval_sample,
            run.config.seed,
            storage_options=run.storage_options,
        ),
        timings=timings,
    )
    t0 = time.perf_counter()
    files = write_report(
        run.report_url,
        metrics,
        plots,
        title=f"clam-dist run {run.store.name}",
        storage_options=run.storage_options,
    )
    timings["report"] = round(time.perf_counter() - t0, 3)
    return {
        "metrics": metrics,
        "report": run.store.url_of("report", "index.html"),
        "report_files": files,
        "timings_s": timings,
    }


STAGE_FUNCS: dict[str, Callable[[Run], dict]] = {
    "data": stage_data,
    "train": stage_train,
    "assign": stage_assign,
    "evaluate": stage_evaluate,
}


def _stage_total(run: Run, stage: str, summary: dict) -> int | None:
    """Rows a stage will go through, when known before it runs (for its progress line)."""
    d = run.config.data
    if stage == "data":
        return d.n if not d.url and d.generate == "mixture" else None
    if stage in ("assign", "evaluate"):
        return summary["stages"].get("data", {}).get("rows")
    return None  # train: steps, from its first report


def _stage_rows(stage: str, record: dict) -> int | None:
    if stage == "evaluate":
        return record.get("metrics", {}).get("rows")
    return record.get("rows")


def _init_ray(config: PipelineConfig, announce: Callable[[str], None]) -> None:
    """Start the embedded Ray (or join RAY_ADDRESS) quietly: its INFO lines, the workers'
    output and Ray Data's progress bars stay in Ray's session folder (named once, through
    ``announce``) unless -v (clam_dist.ray_session)."""
    from clam_dist.ray_session import start_ray

    start_ray(num_cpus=config.num_cpus, announce=announce)


def check_input_before_work(config: PipelineConfig) -> None:
    """A given ``data.url`` must list Parquet files before the run dir is made or any
    stage starts: the CLI calls this first, so a missing or empty input is the user's to
    fix (exit 2), not a failed data stage with a summary written. (A library caller of
    run_pipeline gets the failed run and its summary, as before.)"""
    if not config.data.url:
        return
    from clam_dist.data.source import VectorSource

    VectorSource.from_config(config.data.url, config.data).files()  # raises if none


def run_pipeline(
    config: PipelineConfig,
    from_stage: str | None = None,
    only: list[str] | None = None,
    console: Console | None = None,
) -> dict:
    """Run (or resume) the pipeline; returns the summary (also written to summary.json).
    ``console``: the per-stage progress view (none by default). One pipeline at a time
    per run directory (pipeline.lock): another one's is refused before any work."""
    import ray

    if from_stage is not None and from_stage not in STAGES:
        raise ValueError(f"unknown stage {from_stage!r}; stages: {STAGES}")
    console = console or NullConsole()
    store = run_store(config)
    created = store.is_local and not store.local.exists()
    run = Run(config, console, store)  # a folder of other files is refused; makes it
    # Seconds per stage run now ("ray_init" when this run started Ray); a stage skipped
    # because an earlier run finished it is not in here (its record keeps its seconds).
    timings: dict[str, float] = {}
    started_ray = False
    try:
        with run_dir_lock(store) as taken_over:  # another pipeline's run: refused first
            # Ray before any stage when one will need it: on a cluster of several nodes,
            # whether every node sees the run's storage is checked before any work.
            held: list[str] = []  # Ray's log folder, named once the storage check passed
            if not ray.is_initialized() and _needs_ray(config, store, from_stage, only):
                t0 = time.perf_counter()
                _init_ray(config, held.append)
                started_ray = True
                timings["ray_init"] = round(time.perf_counter() - t0, 3)
            cluster = check_storage(config, store) if ray.is_initialized() else None
            for line in held:
                console.line(line)
            return _run_locked(run, from_stage, only, taken_over, timings, cluster)
    except StorageNotShared:
        if created:  # refused before any work: leave no empty run folder behind
            shutil.rmtree(store.local / "stages", ignore_errors=True)
            with contextlib.suppress(OSError):
                store.local.rmdir()
        raise
    finally:
        if started_ray:
            ray.shutdown()


def _needs_ray(
    config: PipelineConfig, store: RunStore, from_stage: str | None, only: list[str] | None
) -> bool:
    """Whether a stage this call will run needs Ray (a finished stage is skipped, and
    once one stage runs every later one does)."""
    pending = False
    for i, stage in enumerate(STAGES):
        rerun = from_stage is not None and i >= STAGES.index(from_stage)
        pending = pending or rerun or store.read_json("stages", f"{stage}.json") is None
        if only and stage not in only:
            continue
        if pending and (stage == "assign" or (stage == "train" and config.train.trainer == "ray")):
            return True
    return False


def check_storage(config: PipelineConfig, store: RunStore) -> dict | None:
    """On a Ray cluster of several nodes: every path of the run (the run dir holds the
    data it generates, the checkpoints, model, assignments and report) seen by every
    node, or StorageNotShared (exit 2) naming the path and the node. None on one node."""
    from clam_dist.shared_storage import StoragePath, check_visible_from_every_node

    options = config.data.storage_options
    paths = [StoragePath("run_dir", store.url, options, writes=True)]
    if config.data.url:
        paths.append(StoragePath("data.url", config.data.url, options, writes=False))
    return check_visible_from_every_node(paths, shared=config.storage.shared)


class _EventFile:
    """The run's events.jsonl. A local run appends to it in place; a run in object storage
    (which cannot append) appends to a local copy that is uploaded whole after every
    stage and at the end."""

    def __init__(self, run: Run):
        self.run = run
        if run.store.is_local:
            self.path, self._spool = run.dir / "logs" / "events.jsonl", None
            return
        self._spool = Path(tempfile.mkdtemp(prefix="clam-dist-events-"))
        self.path = self._spool / "events.jsonl"
        self.path.write_text(run.store.read_text("logs", "events.jsonl") or "")

    def sync(self) -> None:
        if self._spool is not None:
            self.run.store.upload(self.path, "logs", "events.jsonl")

    def close(self) -> None:
        if self._spool is not None:
            self.sync()
            shutil.rmtree(self._spool, ignore_errors=True)


def _run_locked(
    run: Run,
    from_stage: str | None,
    only: list[str] | None,
    taken_over: dict | None,
    timings: dict[str, float],
    cluster: dict | None,
) -> dict:
    import ray

    config, console = run.config, run.console
    if from_stage is not None:
        for stage in STAGES[STAGES.index(from_stage) :]:
            run.forget(stage)
            run.rerun_requested.add(stage)
    check_unchanged(run)
    summary = {
        "run_dir": run.store.url,
        "config": persistable(to_dict(config)),  # storage_options may hold credentials
        "stages": {},
        "status": "running",
    }
    if cluster is not None:  # several nodes: what the storage check saw
        summary["cluster"] = cluster
    started_ray, stage = False, None
    t_all = time.perf_counter()
    # Machine records live with the run; under the CLI the routing ends after job_done.
    events = _EventFile(run)
    previous_events = logs.set_event_file(events.path)
    log_event("pipeline_start", run_dir=run.store.url, config=to_dict(config))  # masked
    if taken_over is not None:  # a crashed or killed pipeline's lock
        log_event("run_dir_lock_taken_over", level="warning", previous_holder=taken_over)
    try:
        for stage in STAGES:
            if only and stage not in only:
                continue
            # Once a stage runs, every later one runs too: its inputs are new.
            prior = run.done(stage) if not timings.keys() & set(STAGES) else None
            if prior is not None:
                summary["stages"][stage] = dict(prior, skipped=True)
                log_event("stage_skipped", stage=stage, reason="finished by an earlier run")
                console.stage_skipped(stage)
                continue
            needs_ray = stage == "assign" or (stage == "train" and config.train.trainer == "ray")
            if needs_ray and not ray.is_initialized():
                t0 = time.perf_counter()
                _init_ray(config, console.line)
                started_ray = True
                timings["ray_init"] = round(time.perf_counter() - t0, 3)
            # What the previous stage's allocators kept would be this stage's floor.
            release_unused_memory()
            t0 = time.perf_counter()
            log_event("stage_start", stage=stage)
            console.stage_start(
                stage,
                _stage_total(run, stage, summary),
                unit="steps" if stage == "train" and config.train.trainer == "ray" else "rows",
            )
            try:
                record = run.finish(stage, STAGE_FUNCS[stage](run), time.perf_counter() - t0)
            except BaseException:
                console.stage_end(stage, time.perf_counter() - t0, status="failed")
                raise
            summary["stages"][stage] = record
            timings[stage] = record["seconds"]
            console.stage_end(stage, timings[stage], done=_stage_rows(stage, record))
            log_event("stage_done", stage=stage, seconds=timings[stage])
            events.sync()
        summary["status"] = "succeeded"
    except Exception as exc:
        summary["status"] = "failed"
        # through Ray's wrappers, to the message that names the file, rows or field
        summary["error"] = str(exc) if isinstance(exc, JobError) else summary_line(exc)
        summary["traceback"] = traceback.format_exc()
        log_event("stage_failed", level="error", stage=stage, error=summary["error"])
    finally:
        summary["seconds"] = round(time.perf_counter() - t_all, 3)
        summary["timings_s"] = timings
        summary["overview"] = overview(run, summary)
        run.store.write_json(summary, "summary.json", default=_json_default)
        log_event(
            "pipeline_done",
            level="info" if summary["status"] == "succeeded" else "error",
            status=summary["status"],
            seconds=summary["seconds"],
            timings_s=timings,
            summary=run.store.url_of("summary.json"),
        )
        events.close()
        if started_ray:
            ray.shutdown()
        if not logs.in_job():  # a library caller: the run's file was for this call only
            logs.set_event_file(previous_events)
    return summary
