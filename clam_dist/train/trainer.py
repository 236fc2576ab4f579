"""Distributed training with Ray Train (ClAM, attention clustering, DCAM, k-means): the driver side.

``run_training(config)`` checks resources and storage (fail fast, with the numbers),
initialises once (``sources.initialise``) or takes the initialisation from a resume
checkpoint, plans the steps, and runs ``loop.train_loop`` on ``num_workers`` TorchTrainer
workers with FailureConfig restarts from the last checkpoint. The last worker step writes
the model artifact (safetensors + JSON) next to the checkpoints: ``<storage>/<name>/model``.
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass, field
from pathlib import Path

from clam_dist import methods
from clam_dist.data.urls import is_local_url, refuse_url
from clam_dist.memory import release_unused_memory
from clam_dist.train import checkpoint as ckpt
from clam_dist.train import run_record
from clam_dist.train.config import TrainConfig
from clam_dist.train.interruptible import fit_interruptibly
from clam_dist.train.loop import FAILURE_MARKER, train_loop  # noqa: F401 - re-exported
from clam_dist.train.objectives import total_epochs
from clam_dist.train.sources import init_sample, initialise, make_source, standardize
from clam_dist.train.step import resolve_lanes, steps_in_epoch
from clam_dist.train.worker_config import build_loop_config


@dataclass
class TrainResult:
    artifact_url: str
    checkpoint_path: str | None
    metrics: dict
    history: list[dict] = field(default_factory=list)


def storage(cfg: TrainConfig):
    """(storage_path for RunConfig, pyarrow filesystem or None, fsspec URL of the run root).

    Remote paths (s3://, gs://, ...) go through fsspec with data.storage_options (so a
    custom S3 endpoint works) wrapped as a pyarrow filesystem for Ray Train; a local path
    is created and probed for writability before any work starts.
    """
    path = cfg.run.storage_path
    if not is_local_url(path):
        import pyarrow.fs as pafs

        from clam_dist.data.source import open_filesystem

        fs, inner = open_filesystem(path, cfg.data.storage_options)
        probe = f"{inner.rstrip('/')}/.probe-{os.getpid()}"
        try:
            fs.pipe(probe, b"")
            fs.rm(probe)
        except Exception as exc:  # noqa: BLE001 - any backend error means "cannot write here"
            raise PermissionError(f"run.storage_path {path} is not writable: {exc}") from exc
        return inner, pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path.rstrip("/")
    local = os.path.abspath(refuse_url(path, "run.storage_path"))  # file:// taken off
    try:
        os.makedirs(local, exist_ok=True)
        probe = Path(local) / f".probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"run.storage_path {path} is not writable: {exc}") from exc
    return local, None, local


def _first_missing_folder(path: str) -> str | None:
    """The outermost folder of a local ``path`` that does not exist yet (None if all do,
    or for a remote store, which has no folders)."""
    if not is_local_url(path):
        return None
    missing, here = None, os.path.abspath(refuse_url(path, "run.storage_path"))
    while not os.path.exists(here):
        missing, parent = here, os.path.dirname(here)
        if parent == here:
            break
        here = parent
    return missing


def _remove_if_empty(folder: str | None) -> None:
    """Remove ``folder`` and the folders below it if they hold no file (ours, just made)."""
    if folder is None or not os.path.isdir(folder):
        return
    for root, dirs, files in os.walk(folder, topdown=False):
        if files or any(os.path.exists(os.path.join(root, d)) for d in dirs):
            return
        os.rmdir(root)


def check_resources(cfg: TrainConfig) -> None:
    """Fail fast (no hang waiting for a placement group) when the cluster cannot hold the
    requested workers."""
    import ray

    res = ray.cluster_resources()
    w = cfg.run.num_workers
    if w < 1:
        raise ValueError(f"run.num_workers must be >= 1, got {w}")
    need_cpu = w * cfg.run.cpus_per_worker
    if need_cpu > res.get("CPU", 0):
        raise ValueError(
            f"run.num_workers={w} x run.cpus_per_worker={cfg.run.cpus_per_worker:g} needs "
            f"{need_cpu:g} CPUs; the Ray cluster has {res.get('CPU', 0):g}"
        )
    free = ray.available_resources().get("CPU", 0)
    if need_cpu > free:  # held by other jobs (or an autoscaler has yet to add nodes)
        from clam_dist.logs import log_event

        log_event(
            "train_waiting_for_cpus",
            level="warning",
            need_cpus=need_cpu,
            free_cpus=free,
            note="Ray Train waits until other work releases CPUs or the cluster grows",
        )
    if cfg.run.use_gpu and w > res.get("GPU", 0):
        raise ValueError(
            f"run.use_gpu with run.num_workers={w} needs {w} GPUs; the Ray cluster has "
            f"{res.get('GPU', 0):g}"
        )


def check_method_config(cfg: TrainConfig, d: int) -> None:
    """Method-specific checks that need the data's width, before any work starts."""
    if cfg.model.n_clusters < 1:
        raise ValueError(f"model.n_clusters must be >= 1, got {cfg.model.n_clusters}")
    methods.get(cfg.model.method).load_hooks().check_train_config(cfg, d)


def plan_steps(cfg: TrainConfig, source) -> dict:
    """Steps per epoch (from Parquet footers; the same on every worker) and the total."""
    # Lanes are row ranges (row groups, split when large), so any lane count fits any
    # number of files; planned from the footers' row-group sizes, as the workers do.
    files, counts = source.files(), source.row_group_rows()
    n_lanes, lane_batch = resolve_lanes(cfg.data.lanes, cfg.run.num_workers, cfg.optim.batch_size)
    if n_lanes > source.num_rows():
        raise ValueError(
            f"{n_lanes} lanes (data.lanes, default one per worker) but the data has only "
            f"{source.num_rows()} rows"
        )
    per_epoch = [
        steps_in_epoch(files, counts, n_lanes, lane_batch, e, cfg.run.seed)
        for e in range(total_epochs(cfg))
    ]
    total = sum(per_epoch)
    if cfg.optim.max_steps:
        total = min(total, cfg.optim.max_steps)
    return {"steps_per_epoch": per_epoch, "total_steps": total, "files": len(files)}


def resume_init(cfg: TrainConfig, d: int) -> dict:
    """The initialisation the resume checkpoint was trained with (so beta, scaler and fill
    stay those of the original run); its k and d must match this run's."""
    resume = ckpt.open_checkpoint(cfg.run.resume_from, cfg.data.storage_options)
    state = ckpt.read_state(resume)
    ckpt.check_shape(state, cfg.model.n_clusters, d)
    ckpt.check_method(state, cfg.model.method)
    with resume.as_directory() as ckdir:
        tensors, _ = ckpt.load(ckdir)
    return {**state["init"], "prototypes": tensors["prototypes"].numpy()}


def check_storage(cfg: TrainConfig) -> dict | None:
    """On a Ray cluster of several nodes: run.storage_path (written: checkpoints from the
    workers' nodes, the model), data.url and run.resume_from (read by every worker) seen
    by every node, or StorageNotShared (exit 2) naming the path and the node count; a
    local path only with storage.shared. None on one node (not checked)."""
    from clam_dist.shared_storage import StoragePath, check_visible_from_every_node

    options = cfg.data.storage_options
    paths = [StoragePath("run.storage_path", cfg.run.storage_path, options, writes=True)]
    if cfg.data.url:
        paths.append(StoragePath("data.url", cfg.data.url, options, writes=False))
    if cfg.run.resume_from:
        paths.append(StoragePath("run.resume_from", cfg.run.resume_from, options, writes=False))
    return check_visible_from_every_node(paths, shared=cfg.storage.shared)


def run_training(cfg: TrainConfig, progress_queue=None, check_nodes: bool = False) -> TrainResult:
    """Initialise on the driver, fit with TorchTrainer, return where the artifact is.
    ``progress_queue``: a ray.util.queue.Queue that receives each report's step, epoch,
    loss and rows/s (the driver's progress view; see clam_dist.progress.TrainReports).
    ``check_nodes``: first check that every node of the cluster sees the run's paths
    (``check_storage``; the pipeline checks its own run before it trains)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        ray.init()  # under `ray job submit` this joins the job's cluster
    # Earlier Ray Data work in this driver (an assignment, a read) may sit in unreachable
    # reference cycles whose actor pools still hold CPUs: collect them before asking for
    # the workers' resources.
    gc.collect()
    created = _first_missing_folder(cfg.run.storage_path)
    try:
        if check_nodes:  # before any work; its probe may make the storage folder
            check_storage(cfg)
        check_resources(cfg)
        storage_path, storage_fs, run_url = storage(cfg)
        # Ray Train resumes whatever run <storage>/<name> holds: refuse another config's
        # folder now, before the init sample (the record is written below).
        run_record.check(cfg, run_url)
        source = make_source(cfg)
        plan = plan_steps(cfg, source)
        # Ray Train v2 has no resume_from_checkpoint: the loop opens run.resume_from itself
        # when Ray hands it no checkpoint of this run (a restart after a failure does).
        check_method_config(cfg, source.dim())
        # One sample serves the initialisation, DCAM's joint phase and the drift threshold.
        sample = init_sample(cfg)
        # The sample pass read every row: what its reads left in Arrow's pool and the C
        # heap grows with the data and would be the floor of the initialisation's peak.
        release_unused_memory()
        init = resume_init(cfg, source.dim()) if cfg.run.resume_from else initialise(cfg, sample)
        # Only once every fail-fast check passed: a refused config's corrected re-run under
        # the same name must not meet a record of it.
        run_record.record(cfg, run_url)
    except BaseException:
        _remove_if_empty(created)  # a refused run leaves no empty storage folder behind
        raise
    # Arrays reach the workers through Ray's object store, not pickled in the config.
    worker_sample = (
        standardize(sample.x, init["mean"], init["scale"])
        if methods.get(cfg.model.method).needs_sample_on_workers  # DCAM's joint phase
        else None
    )
    loop_config = build_loop_config(cfg, init, plan, run_url, worker_sample)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config.to_ray(),
        torch_config=TorchConfig(backend="nccl" if cfg.run.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.run.num_workers,
            use_gpu=cfg.run.use_gpu,
            resources_per_worker={"CPU": cfg.run.cpus_per_worker},
            # one worker per node where the cluster allows (Ray packs them otherwise):
            # the all-reduce then crosses nodes as it does on a real cluster
            placement_strategy="SPREAD",
        ),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[progress_callback(tensorboard_dir(cfg, run_url), progress_queue)],
        ),
    )
    result = fit_interruptibly(trainer)  # Ctrl-C/SIGTERM: abort, one line, 130/143
    if result.error:
        raise result.error
    history = ckpt.read_state(result.checkpoint)["history"] if result.checkpoint else []
    checkpoint_url = None
    if result.checkpoint:  # as a URL that run.resume_from accepts
        scheme = run_url.split("://", 1)[0] if "://" in run_url else None
        path = result.checkpoint.path
        checkpoint_url = f"{scheme}://{path.lstrip('/')}" if scheme else path
    artifact_url = f"{run_url}/{cfg.run.name}/model"
    workers = record_drift_threshold(cfg, artifact_url, sample.x).get("workers") or []
    metrics = dict(result.metrics or {})
    metrics["per_node"] = per_node(workers)
    return TrainResult(
        artifact_url=artifact_url,
        checkpoint_path=checkpoint_url,
        metrics=metrics,
        history=history,
    )


def per_node(workers: list[dict]) -> dict[str, dict]:
    """Rows, seconds and workers per node from the workers' records (artifact meta)."""
    nodes: dict[str, dict] = {}
    for w in workers:
        node = nodes.setdefault(w["node_id"], {"workers": 0, "rows": 0, "seconds": 0.0})
        node["workers"] += 1
        node["rows"] += int(w["rows"])
        node["seconds"] = round(max(node["seconds"], float(w["seconds"])), 3)
    return nodes


def record_drift_threshold(cfg: TrainConfig, artifact_url: str, x) -> dict:
    """Add the training energy's 99th percentile on rows ``x`` (the run's sample, raw) to
    the artifact, so `clam-dist assign` can report drift on new partitions. Returns the
    artifact's meta."""
    from clam_dist.artifacts import load_artifact, save_artifact
    from clam_dist.models.predictor import drift_threshold

    artifact = load_artifact(artifact_url, cfg.data.storage_options)
    artifact.meta.update(drift_threshold(artifact, x))
    save_artifact(artifact, artifact_url, cfg.data.storage_options)
    return artifact.meta


def tensorboard_dir(cfg: TrainConfig, run_url: str) -> str | None:
    """Where the training metrics' TensorBoard events go (None: off)."""
    setting = cfg.run.tensorboard_dir
    if setting == "auto":
        return None if "://" in run_url else os.path.join(run_url, cfg.run.name, "tensorboard")
    return setting or None


def progress_callback(logdir: str | None = None, queue=None):
    """A Ray Train callback printing a progress bar per metrics window (loss, energy,
    dead prototypes, throughput) and, when ``logdir`` is set, writing every numeric metric
    as a TensorBoard scalar at its global step. It runs in the train controller, whose
    output Ray streams to the driver's console when log_to_driver is on; ``queue`` (a Ray
    queue) also gets each report's few numbers, for a driver that shows its own view."""
    from ray.train import UserCallback

    class Progress(UserCallback):
        writer = None

        def after_report(self, run_context, metrics, checkpoint) -> None:
            m = metrics[0] if metrics else {}
            if "step" not in m:
                return
            if logdir:
                self._tensorboard(m)
            if queue is not None:
                keys = ("step", "total_steps", "epoch", "loss", "rows_per_s_total", "phase")
                # a full or gone queue never stops training
                with contextlib.suppress(Exception):
                    queue.put_nowait({k: m[k] for k in keys if k in m})
            total = max(1, m["total_steps"])
            bar = "#" * int(20 * m["step"] / total)
            per_worker = "/".join(f"{r:,.0f}" for r in m["rows_per_s_worker"])
            print(
                f"[clam-dist train] [{bar:<20s}] step {m['step']}/{total} epoch {m['epoch']} "
                + (f"({m['phase']}) " if "phase" in m else "")
                + (
                    f"loss {m['loss']:.4f}"  # a phase with no prototypes to monitor yet
                    if not m.get("monitored", True)
                    else f"loss {m['loss']:.4f} energy {m['mean_energy']:.3f} "
                    f"dead {m['dead_prototypes']}"
                )
                + " "
                f"{m['rows_per_s_total']:,.0f} rows/s ({per_worker} per worker)"
                + (" [checkpoint]" if checkpoint else ""),
                flush=True,
            )

        def _tensorboard(self, m: dict) -> None:
            from tensorboardX import SummaryWriter  # a dependency of ray[tune]

            if self.writer is None:
                self.writer = SummaryWriter(logdir, flush_secs=5)
            for name, value in m.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"train/{name}", value, m["step"])
            if m["step"] >= m.get("total_steps", float("inf")):
                # The last report: close, which drains tensorboardX's queue (its flush()
                # does not), so no event is written after fit() returns.
                self.writer.close()
                self.writer = None
            else:
                self.writer.flush()  # every report: the run may end (or die) at any time

        def after_exception(self, run_context, worker_exceptions) -> None:
            if self.writer is not None:  # drain what was reported before the failure
                self.writer.close()
                self.writer = None

    return Progress()
