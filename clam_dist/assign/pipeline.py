"""Cluster assignment at scale: Ray Data read -> map_batches -> Parquet written to a
staging prefix, fused by Ray Data into one task per row range (each worker process loads
the model from its URL once, see assign/worker.py) -> row count verified -> commit.

Everything that can be checked before Ray starts is checked first (config, model artifact,
input schema vs model width, pass-through columns, output prefix state and writability),
so bad input fails in seconds with a message naming the problem, and never leaves a
half-written output.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from dataclasses import asdict, dataclass, field

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from clam_dist.artifacts import ArtifactError, ModelArtifact, load_artifact
from clam_dist.assign.assigner import ClusterAssigner, InjectedCrash
from clam_dist.assign.commit import OutputPrefix, iter_assignments, read_assignments
from clam_dist.assign.stats import stage_seconds
from clam_dist.assign.worker import assign_batch, fingerprint
from clam_dist.config import ConfigError, check_constraints, knob
from clam_dist.data.errors import DataError
from clam_dist.data.source import VectorSource, is_local, open_filesystem
from clam_dist.data.urls import absolute
from clam_dist.errors import JobError, summary_line
from clam_dist.logs import log_event, ray_data_errors_reported_by_us
from clam_dist.secrets import public_storage_options
from clam_dist.sections import COUNT_OR_OFF, NON_NEGATIVE, OutputsSection, SourceColumns

OPTIONAL_OUTPUTS = ("energy", "margin", "probs")
BASE_COLUMNS = ("id", "cluster", "distance")
# Crash injection for recovery tests and drills (see AssignConfig.fail_after_batches).
FAIL_AFTER_ENV = "CLAM_DIST_ASSIGN_FAIL_AFTER_BATCHES"
CRASH_BEFORE_COMMIT_ENV = "CLAM_DIST_ASSIGN_CRASH_BEFORE_COMMIT"

__all__ = [
    "AssignConfig",
    "AssignResult",
    "ClusterAssigner",
    "InjectedCrash",
    "auto_batch_size",
    "iter_assignments",
    "read_assignments",
    "run_assignment",
]


class AssignmentError(JobError):
    """The Ray Data assignment failed (a worker error, bad data found while reading); the
    message is the root cause's one line, ``details`` the remote traceback. Nothing was
    committed."""


@dataclass
class AssignConfig(SourceColumns, OutputsSection):
    """What `clam-dist assign` reads from TOML/YAML (top-level keys) and flags: the shared
    column and output knobs (clam_dist/sections.py) plus the job's own below.

    ``input``/``output`` may contain ``{partition}``, filled from ``partition``, so one
    scheduled config assigns each new partition (e.g. ``date=2026-05-01``) with an
    existing model: ``input = "s3://b/events/{partition}"``,
    ``output = "s3://b/clusters/{partition}"``. ``storage_options`` serve input, output
    AND model.
    """

    input: str = ""
    output: str = ""
    model: str = ""
    partition: str | None = None
    # CPUs each assignment task reserves (the name predates tasks). 1.0: Ray gives the
    # task's process one torch thread, and read work fused into the same task (or free
    # slots) keeps the CPUs busy; see _compute_plan.
    num_cpus_per_actor: float = knob(1.0, NON_NEGATIVE)
    # > 0: each task runs the model on a GPU
    num_gpus_per_actor: float = knob(0.0, NON_NEGATIVE)
    overwrite: bool = False  # replace a committed result at `output`
    # Duplicate ids make the output ambiguous to join on: refused unless allowed here.
    allow_duplicate_ids: bool = False
    # On a Ray cluster of several nodes, input, output and model must be object storage,
    # or local paths on a mount every node sees (NFS, a volume): true says they are, and
    # `clam-dist assign` checks it from every node before any work (the pipeline's and
    # training's storage.shared; clam_dist/shared_storage.py). One node: not checked.
    storage_shared: bool = False
    # Crash injection (tests, recovery drills): every actor raises after this many batches;
    # or the driver stops after the staged write, before the commit. Also settable through
    # the environment (CLAM_DIST_ASSIGN_FAIL_AFTER_BATCHES, ..._CRASH_BEFORE_COMMIT=1).
    fail_after_batches: int = knob(0, COUNT_OR_OFF)
    crash_before_commit: bool = False

    def __post_init__(self) -> None:
        for name in ("input", "output", "model"):
            if not getattr(self, name):
                raise ConfigError(f"{name}: required (a path or fsspec URL)")
            setattr(self, name, absolute(getattr(self, name)))
        unknown = [o for o in self.outputs if o not in OPTIONAL_OUTPUTS]
        if unknown:
            raise ConfigError(f"outputs: unknown {unknown}; choose from {list(OPTIONAL_OUTPUTS)}")
        clash = [c for c in self.passthrough if c in BASE_COLUMNS + OPTIONAL_OUTPUTS]
        if clash:
            raise ConfigError(
                f"passthrough: {clash} would collide with output columns "
                f"{list(BASE_COLUMNS + OPTIONAL_OUTPUTS)}"
            )
        check_constraints(self)  # built in code too (the pipeline's stage), not only read
        if self.vector_column is not None and self.feature_columns is not None:
            raise ConfigError("vector_column and feature_columns: give one, not both")
        has_slot = "{partition}" in self.input or "{partition}" in self.output
        if self.partition is not None and not has_slot:
            raise ConfigError(
                "partition: given, but neither input nor output contains '{partition}'"
            )
        if self.partition is None and has_slot:
            raise ConfigError("partition: input/output contain '{partition}'; set partition")

    @property
    def input_url(self) -> str:
        return self.input.replace("{partition}", self.partition or "")

    @property
    def output_url(self) -> str:
        return self.output.replace("{partition}", self.partition or "")

    def source(self) -> VectorSource:
        # nan_policy "error": exactly one output row per input row, never drop rows
        return VectorSource.from_config(self.input_url, self, nan_policy=self.nan_policy)


@dataclass
class AssignResult:
    output: str
    rows: int
    files: int
    seconds: float  # wall time of the whole job (checks, actors, read, model, write, commit)
    rows_per_second: float
    batch_size: int = 0
    drift: dict = field(default_factory=dict)  # energy_p99, rows_above, share_above | note
    # How the work was laid out over CPUs (compute kind, CPUs per task, tasks in flight,
    # batch size and why); see _compute_plan.
    plan: dict = field(default_factory=dict)
    stats: str = ""  # Ray Data's execution statistics text for the read/assign/write
    # node id -> tasks, rows and seconds of the assignment tasks that ran there
    per_node: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    # Seconds per stage: checks (model, schema, output prefix), ray_init, assign_write (read
    # -> model -> staged Parquet, streamed together), drift, commit; inside assign_write,
    # from Ray Data's stats: read_s / compute_s / write_s (each operator's active span;
    # they overlap) and *_task_s (seconds its tasks ran, summed over tasks).
    timings_s: dict = field(default_factory=dict)
    dropped_rows: int = 0  # rows left out under nan_policy="drop"

    @property
    def drift_share(self) -> float | None:
        """Share of rows whose AM energy exceeds the training data's 99th percentile."""
        return self.drift.get("share_above")

    def to_dict(self) -> dict:
        return asdict(self) | {"drift_share": self.drift_share}


def auto_batch_size(d: int, k: int) -> int:
    """Rows per model call: ~2^24 floats for the widest (rows x max(d, k)) block, within
    [4096, 65536]. Per-call overhead dominates small batches (measured at d = k = 64 by
    jobs/bench_assign.py --batch-sizes: 1,024 rows/call ran 9x slower than 65,536), while
    a probs output (rows x k floats) must stay at tens of MB per actor."""
    rows = (1 << 24) // max(1, d, k)
    return int(min(65_536, max(4_096, 1 << (rows.bit_length() - 1))))


def _check_unique_ids(config: AssignConfig, source: VectorSource) -> None:
    """Refuse duplicate ids (before any work), naming the first ones and their counts,
    in bounded memory (data/duplicates.py). Generated '<file>:<row>' ids are unique by
    construction."""
    if config.id_column is None or config.allow_duplicate_ids:
        return
    from clam_dist.data.duplicates import find_duplicates

    dup = find_duplicates(source, config.id_column)
    if not dup.values:
        return
    shown = ", ".join(f"{v!r} x{c}" for v, c in dup.examples)
    raise DataError(
        f"input {config.input_url}: id column {config.id_column!r} has {dup.values} duplicated "
        f"value(s) among {dup.rows} rows (first: {shown}); fix the ids or pass "
        "--set allow_duplicate_ids=true"
    )


def check_inputs(config: AssignConfig, source: VectorSource, artifact: ModelArtifact) -> None:
    """Schema vs model and pass-through columns, on the driver before any Ray work."""
    d = source.dim()
    if d != artifact.n_features:
        raise DataError(
            f"input {config.input_url} (first file {source.files()[0]}) has vectors of "
            f"width {d}, but model {config.model} expects {artifact.n_features} features"
        )
    names = source.schema.names
    for what, cols in (
        ("pass-through column(s)", config.passthrough),
        ("id column", [config.id_column] if config.id_column else []),
        ("label column", [config.label_column] if config.label_column else []),
    ):
        missing = [c for c in cols if c not in names]
        if missing:
            raise DataError(
                f"input {config.input_url}: {what} {missing} not found; columns: {names}"
            )


def check_disjoint(config: AssignConfig) -> None:
    """Output inside the input (or vice versa) would make the next read see the outputs."""
    fs_in, p_in = open_filesystem(config.input_url, config.storage_options)
    fs_out, p_out = open_filesystem(config.output_url, config.storage_options)
    if type(fs_in) is not type(fs_out):
        return
    a, b = p_in.rstrip("/") + "/", p_out.rstrip("/") + "/"
    if a.startswith(b) or b.startswith(a):
        raise DataError(
            f"output {config.output_url} and input {config.input_url} overlap; "
            "write the assignments to a separate prefix"
        )


def load_model(config: AssignConfig) -> ModelArtifact:
    try:
        return load_artifact(config.model, config.storage_options)
    except ArtifactError:
        raise
    except (OSError, ValueError) as exc:  # unreachable store, garbage bytes, ...
        raise ArtifactError(f"cannot load model artifact {config.model}: {exc}") from exc


def _drift(prefix: OutputPrefix, staging: str, energy_p99: float | None) -> dict:
    """Share of rows whose energy exceeds the training 99th percentile (issue 7)."""
    if energy_p99 is None:
        return {
            "note": "skipped: the model artifact's meta has no 'energy_p99' (training-data "
            "energy 99th percentile), so drift cannot be measured"
        }
    above = total = 0
    for f in prefix.staged_files(staging):
        with prefix.fs.open(f, "rb") as handle:
            e = pq.read_table(handle, columns=["energy"]).column(0).to_numpy()
        above += int((e > energy_p99).sum())
        total += int(e.size)
    return {
        "energy_p99": float(energy_p99),
        "rows_above": above,
        "rows": total,
        "share_above": above / total if total else 0.0,
        "expected_share_without_drift": 0.01,
    }


def _compute_plan(config: AssignConfig, batch_size: int) -> dict:
    """How the assignment uses the CPUs; returned in AssignResult.plan and printed by the
    bench, so a run says what it asked Ray for."""
    return {
        "compute": "fused tasks",
        "assign_tasks_in_flight": config.concurrency,
        "cpus_per_assign_task": config.num_cpus_per_actor,
        "gpus_per_assign_task": config.num_gpus_per_actor,
        "batch_size": batch_size,
        "why": (
            "read -> assign -> write fused by Ray Data into one stateless task per row "
            "range (the vectors never pass through the object store), at most "
            "`concurrency` tasks at once through the job's CPU limit rather than a "
            "per-operator cap (which would stop the fusion); no actor pool, no reserved "
            "read slot, no fractional CPUs: reads overlap compute because while one "
            "task reads, the others compute. Each worker process loads the model from "
            "its URL once (cached); a retried task reloads it. Blocks of "
            f"{ASSIGN_BLOCK_BYTES >> 20} MiB bound what a task holds at once. Tasks: equal row "
            "ranges, one per 524,288 rows at most (a fixed bound on what one task "
            f"holds, whatever the data's size), at least {TASKS_PER_SLOT} per slot (each "
            "task is a scheduling round trip); Ray Data's per-operator resource "
            "reservation is off, so every slot starts at once. "
            "Batch size: rows per predictor call, auto_batch_size(d, k), a fixed rule "
            "measured with jobs/bench_assign.py --batch-sizes."
        ),
    }


def _write_staged(
    source,
    config: AssignConfig,
    prefix: OutputPrefix,
    staging: str,
    settings: dict,
    batch_size,
) -> tuple[str, dict]:
    """Ray Data: read -> assign in tasks -> Parquet in the staging folder. Returns Ray
    Data's stats text and the rows and seconds per node.

    Ray Data's objects sit in reference cycles that can hold the executor and its
    resources: without the collection below, a driver that goes on to other Ray work (the
    pipeline's next stage, a scheduler's next partition, a Ray Train run) may wait for
    CPUs nobody uses any more.
    """
    message = details = None
    stats, per_node = "", {}
    idle_cpus = _available_cpus()
    try:
        with ray_data_errors_reported_by_us():
            stats, per_node = _run_dataset(source, config, prefix, staging, settings, batch_size)
    except Exception as exc:  # noqa: BLE001 - re-raised below as AssignmentError
        # Ray Data's exception and its traceback hold the executor: keep the text (the
        # root cause's one line, and the whole remote traceback for -v), drop the
        # objects, collect.
        message = summary_line(exc)
        details = f"{type(exc).__name__}: {exc}"
    gc.collect()
    if message is not None:
        _wait_for_cancelled_tasks(idle_cpus)
        raise AssignmentError(message, details=details)
    return stats, per_node


# How long a failed assignment waits for its other tasks to end before cleaning up.
CANCELLED_TASKS_WAIT_S = 30.0


def _available_cpus() -> float | None:
    import ray

    return ray.available_resources().get("CPU", 0.0) if ray.is_initialized() else None


def _wait_for_cancelled_tasks(idle_cpus: float | None) -> None:
    """When one task fails, Ray Data cancels the job's other tasks and returns at once
    (no join): a task inside a Parquet write finishes it first, into the staging folder
    the clean-up is about to remove, and would leave a file there after it. Wait (at
    most CANCELLED_TASKS_WAIT_S) until the CPUs the job took are free again."""
    if idle_cpus is None:
        return
    deadline = time.monotonic() + CANCELLED_TASKS_WAIT_S
    while time.monotonic() < deadline:
        available = _available_cpus()
        if available is None or available >= idle_cpus:
            return
        time.sleep(0.1)


def _abort(prefix: OutputPrefix, staging: str) -> None:
    """Remove this attempt's staging (and a prefix it created); then, for a moment, sweep
    what a task cancelled too late wrote there after all (its own attempt folder: the
    name is this attempt's, nobody else writes into it)."""
    prefix.abort(staging)
    for _ in range(STRAGGLER_SWEEPS):
        time.sleep(STRAGGLER_SWEEP_S)
        prefix.sweep(staging)


STRAGGLER_SWEEPS, STRAGGLER_SWEEP_S = 3, 0.2


def _run_dataset(source, config, prefix, staging, settings, batch_size) -> tuple[str, dict]:
    import ray

    from clam_dist.assign.node_tally import read_and_stop, start_tally
    from clam_dist.data.ray_dataset import to_ray_dataset
    from clam_dist.logs import quiet_ray

    quiet_ray()
    ds = labelled = None
    tally = start_tally()
    try:
        # The Dataset copies the DataContext when it is made: settings go in first.
        with _execution_settings(config):
            ds = to_ray_dataset(
                source,
                columns_extra=config.passthrough or None,
                batch_rows=_read_batch_rows(source.dim()),
                read_tasks=_assign_tasks(source, config),
            )
            # Whole blocks (batch_size=None), cut into batch_size-row predictor calls
            # inside the task, and no per-operator concurrency cap: Ray Data then FUSES
            # read -> assign -> write into one task per read unit, so the input vectors
            # never pass through the object store. (A cap, or a row batch size that makes
            # Ray bundle several read units into one task, keeps the operators apart.)
            # The concurrency is the job's CPU limit instead: at most `concurrency` tasks
            # at once.
            labelled = ds.map_batches(
                assign_batch,
                fn_kwargs={**settings, "chunk_rows": batch_size, "tally": tally},
                batch_size=None,
                batch_format="numpy",
                num_cpus=config.num_cpus_per_actor,
                num_gpus=config.num_gpus_per_actor or None,
            )
            labelled.write_parquet(prefix.staging_path(staging), filesystem=_arrow_fs(prefix.fs))
        return _stats_text(labelled), read_and_stop(tally)
    finally:
        del ds, labelled  # this frame outlives the call in a failure's traceback
        with contextlib.suppress(Exception):  # already stopped after a success
            ray.kill(tally)


def _arrow_fs(fs) -> pafs.FileSystem:
    """The pyarrow filesystem Ray writes the staged files through: pyarrow's own for a
    local output (its writes skip the Python file object and the GIL per chunk), else a
    pyarrow view of the same fsspec filesystem (custom endpoints, credentials and all)."""
    if is_local(fs):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


# Tasks per concurrent slot at least: with 2 per slot a 1M-row job ran 4 tasks whose
# times differed by up to 1.8x and the last wave left a slot idle; 4 per slot (8 tasks of
# 125,000 rows on 2 slots) ran 8% more rows/s (jobs/bench_assign.py, alternated runs).
TASKS_PER_SLOT = 4
# Rows per fused task at most, whatever the data's size, so what one task holds does not
# grow with the data (tasks sized from the data, 625,000 vs 1,000,000 rows, put the
# workers' peak RSS 16-18% apart at 2.5M vs 10M rows). What a task holds at once is
# bounded further by its blocks (ASSIGN_BLOCK_BYTES).
TASK_ROWS = 1 << 19


def _assign_tasks(source, config: AssignConfig) -> int:
    """Fused read -> assign -> write tasks: row ranges of at most TASK_ROWS rows, and at
    least TASKS_PER_SLOT per slot. Every extra task costs a scheduling round trip with
    the CPUs idle (40 tasks of 100,000 rows kept 2 CPUs 79% busy), so they are not made
    smaller than that."""
    by_size = -(-source.num_rows() // TASK_ROWS)
    return max(1, by_size, TASKS_PER_SLOT * config.concurrency)


# Bytes per Ray Data block in the assignment (Ray Data's default is 128 MiB). A block is
# what a fused task holds at once, gathered from read batches half its size: with 128 MiB
# blocks (65,536-row reads) a worker's RSS swung between ~500 MB and ~1.1 GB, and its
# peak, the largest of those swings, grew with the number of blocks the process had
# seen (+9..+18% from 2.5M to 10M rows, d = 128, k = 1,024). 16 MiB blocks (16,384-row
# reads) cut the peak to ~0.7-0.8 GB and ran 2-7% faster (jobs/bench_scale.py and
# assignment-only runs of the same files, docs/benchmarks.md).
ASSIGN_BLOCK_BYTES = 16 << 20


def _read_batch_rows(d: int) -> int:
    """Rows per read batch: half a block of float32 vectors of width ``d`` (two read
    batches make one block), within [1,024, 65,536]."""
    return int(min(65_536, max(1_024, ASSIGN_BLOCK_BYTES // 2 // (4 * max(1, d)))))


@contextlib.contextmanager
def _execution_settings(config: AssignConfig):
    """This driver's Ray Data executions limited to ``concurrency`` tasks' worth of CPUs
    (GPUs), and without per-operator resource reservation; both restored afterwards.

    The limit gives the fused tasks their concurrency without a per-operator cap. The
    reservation splits the budget between operators and, before a first task has
    reported its output size, let Ray Data start only ONE task: the second slot sat idle
    for the whole first task (~0.8 s of a 5 s job at 1M rows). The job has one real
    operator whose outputs are a few bytes per task (the written files' metadata), so
    there is nothing to reserve for; measured with jobs/bench_assign.py. Blocks are
    ASSIGN_BLOCK_BYTES."""
    import ray.data

    context = ray.data.DataContext.get_current()
    options = context.execution_options
    limits_before = options.resource_limits
    reservation_before = context.op_resource_reservation_enabled
    block_before = context.target_max_block_size
    limits = {}
    if config.num_cpus_per_actor > 0:
        limits["cpu"] = config.concurrency * config.num_cpus_per_actor
    if config.num_gpus_per_actor > 0:
        limits["gpu"] = config.concurrency * config.num_gpus_per_actor
    options.resource_limits = limits_before.copy(**limits) if limits else limits_before
    context.op_resource_reservation_enabled = False
    context.target_max_block_size = ASSIGN_BLOCK_BYTES
    try:
        yield
    finally:
        options.resource_limits = limits_before
        context.op_resource_reservation_enabled = reservation_before
        context.target_max_block_size = block_before


def _stats_text(ds) -> str:
    """Ray Data's stats of the executed write (best effort: the text is diagnostics)."""
    try:
        return ds._write_ds.stats() if getattr(ds, "_write_ds", None) is not None else ds.stats()
    except Exception as exc:  # noqa: BLE001 - stats must never fail a committed job
        return f"(Ray Data stats unavailable: {type(exc).__name__}: {exc})"


def run_assignment(config: AssignConfig) -> AssignResult:
    """Assign every input row; exactly one committed output row per input row.

    Uses the running Ray instance, or starts a local one. Raises ArtifactError (model
    missing / not ours / corrupt), DataError (input schema vs model, overlap),
    OutputExistsError (committed output, overwrite not set), ForeignOutputError,
    PermissionError (unwritable output), CommitError (row counts differ), and
    AssignmentError for a failure inside the Ray job (its message is the root cause's).
    """
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    lap = _Lap(timings)
    log_event(
        "assign_start",
        input=config.input_url,
        output=config.output_url,
        model=config.model,
        partition=config.partition,
        storage_options=config.storage_options,
    )
    artifact = load_model(config)
    source = config.source()
    check_inputs(config, source, artifact)
    check_disjoint(config)
    _check_unique_ids(config, source)
    expected = source.num_rows()
    prefix = OutputPrefix(config.output_url, config.storage_options)
    staging = prefix.prepare(config.overwrite)
    try:
        return _assign_and_commit(config, source, artifact, prefix, staging, expected, t0, lap)
    except InjectedCrash:
        raise  # a simulated kill of the driver leaves what a real kill leaves
    except BaseException:
        # Nothing of this attempt may look complete, and a committed result it was to
        # replace stays as it was: remove only this attempt's (recorded) staging.
        _abort(prefix, staging)
        raise


def _assign_and_commit(config, source, artifact, prefix, staging, expected, t0, lap):
    import ray

    timings = lap.into

    energy_p99 = artifact.meta.get("energy_p99")
    # Drift needs every row's energy, so it is added to the outputs when measurable.
    outputs = list(dict.fromkeys(config.outputs + (["energy"] if energy_p99 is not None else [])))
    batch_size = config.batch_size or auto_batch_size(artifact.n_features, artifact.k)
    fail_after = config.fail_after_batches or int(os.environ.get(FAIL_AFTER_ENV, "0") or 0)
    lap("checks")
    if not ray.is_initialized():
        ray.init()  # under `ray job submit` this joins the job's cluster
        lap("ray_init")
    settings = {
        "model_url": config.model,
        "model_fingerprint": fingerprint(artifact),
        "storage_options": config.storage_options,
        "outputs": outputs,
        "passthrough": config.passthrough,
        "fail_after_batches": fail_after,
        "device": "cuda" if config.num_gpus_per_actor > 0 else "cpu",
        "nan_policy": config.nan_policy,
        "input_url": config.input_url,
    }
    stats, per_node = _write_staged(source, config, prefix, staging, settings, batch_size)
    lap("assign_write")
    timings.update(stage_seconds(stats))  # read / compute / write inside that lap
    if config.crash_before_commit or os.environ.get(CRASH_BEFORE_COMMIT_ENV) == "1":
        raise InjectedCrash("injected crash after the staged write, before the commit")

    drift = _drift(prefix, staging, energy_p99)
    lap("drift")
    manifest = prefix.commit(
        staging,
        expected,
        max_rows=config.nan_policy == "drop",
        manifest={
            "input": config.input_url,
            "input_files": len(source.files()),
            "partition": config.partition,
            "model": config.model,
            "model_method": artifact.method,
            "k": artifact.k,
            "columns": [*BASE_COLUMNS, *outputs, *config.passthrough],
            "storage_options": public_storage_options(config.storage_options),
            "batch_size": batch_size,
            "concurrency": config.concurrency,
            "drift": drift,
            "input_rows": expected,
            "nan_policy": config.nan_policy,
        },
    )
    lap("commit")
    seconds = time.perf_counter() - t0
    result = AssignResult(
        output=config.output_url,
        rows=manifest["rows"],
        files=len(manifest["files"]),
        seconds=seconds,
        rows_per_second=manifest["rows"] / seconds if seconds > 0 else float("nan"),
        batch_size=batch_size,
        drift=drift,
        manifest=manifest,
        timings_s=timings,
        dropped_rows=expected - manifest["rows"],
        plan=_compute_plan(config, batch_size),
        stats=stats,
        per_node=per_node,
    )
    log_event(
        "assign_done",
        output=result.output,
        rows=result.rows,
        files=result.files,
        seconds=round(seconds, 3),
        rows_per_second=round(result.rows_per_second, 1),
        drift_share=result.drift_share,
        timings_s=timings,
    )
    return result


class _Lap:
    """``lap(name)`` records the seconds since the previous lap under ``name``."""

    def __init__(self, into: dict[str, float]):
        self.into, self.t = into, time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.into[name] = round(now - self.t, 3)
        self.t = now
