"""Distributed ClAM / k-means training with Ray Train (TorchTrainer, gloo or nccl).

Driver: one Dask pass for feature statistics, a uniform sample, initialisation (k-means++
or k-means||) and beta; the initial prototypes go to every worker in the loop config.
Workers: stream their file shard, compute the loss on their rows, all-reduce the
prototype gradient (explicit ``all_reduce``, timed separately), step Adam; checkpoints
every N epochs; FailureConfig restarts from the last checkpoint after a worker dies.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from clam_dist.config import ConfigError, from_dict, to_dict
from clam_dist.data.source import VectorSource
from clam_dist.train.config import TrainConfig

FAILURE_MARKER = "_failure_injected"


@dataclass
class TrainResult:
    artifact_url: str
    checkpoint_path: str | None
    metrics: dict
    history: list[dict] = field(default_factory=list)


def make_source(cfg: TrainConfig) -> VectorSource:
    d = cfg.data
    if not d.url:
        raise ConfigError("data.url: a Parquet prefix is required")
    return VectorSource(
        d.url,
        vector_column=d.vector_column,
        feature_columns=d.feature_columns,
        id_column=d.id_column,
        label_column=d.label_column,
        storage_options=d.storage_options,
        nan_policy=d.nan_policy,
    )


# --------------------------------------------------------------------------- driver side


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
            f"model.n_clusters={k} is larger than the initialisation sample ({len(sample)} rows)"
        )
    mean = stats.mean if cfg.data.standardize else np.zeros_like(stats.mean)
    scale = (
        np.where(stats.std > 0, stats.std, 1.0) if cfg.data.standardize else np.ones_like(stats.std)
    )
    z = torch.from_numpy(((sample.x - mean) / scale).astype(np.float32))
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
    fills = {"mean": stats.mean, "min": stats.min, "max": stats.max, "zero": mean}
    fill = (fills[cfg.model.fill] - mean) / scale
    return {
        "prototypes": protos.numpy().tolist(),
        "beta": float(beta),
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "fill": np.asarray(fill, dtype=np.float32).tolist(),
        "rows": int(stats.count),
        "dim": int(source.dim()),
        "files": len(source.files()),
    }


def _storage(cfg: TrainConfig):
    """(storage_path for RunConfig, pyarrow filesystem or None, fsspec URL of the run)."""
    path = cfg.run.storage_path
    if "://" in path and not path.startswith("file://"):
        import pyarrow.fs as pafs

        from clam_dist.data.source import open_filesystem

        fs, inner = open_filesystem(path, cfg.data.storage_options)
        return inner, pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path.rstrip("/")
    local = os.path.abspath(path.removeprefix("file://"))
    try:
        os.makedirs(local, exist_ok=True)
        probe = Path(local) / f".probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"run.storage_path {path} is not writable: {exc}") from exc
    return local, None, local


def check_resources(cfg: TrainConfig) -> None:
    """Fail fast (no hang) when the cluster cannot hold the requested workers."""
    import ray

    res = ray.cluster_resources()
    need_cpu = cfg.run.num_workers * cfg.run.cpus_per_worker
    if need_cpu > res.get("CPU", 0):
        raise ValueError(
            f"run.num_workers={cfg.run.num_workers} x cpus_per_worker={cfg.run.cpus_per_worker} needs "
            f"{need_cpu:g} CPUs; the Ray cluster has {res.get('CPU', 0):g}"
        )
    if cfg.run.use_gpu and cfg.run.num_workers > res.get("GPU", 0):
        raise ValueError(
            f"run.use_gpu with {cfg.run.num_workers} workers needs as many GPUs; cluster has {res.get('GPU', 0):g}"
        )


def run_training(cfg: TrainConfig) -> TrainResult:
    """Initialise on the driver, fit with TorchTrainer, write the model artifact."""
    import ray
    from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init()
    check_resources(cfg)
    if "://" not in cfg.data.url and not os.path.isabs(cfg.data.url):
        # Workers run in their own working directory: hand them an absolute path.
        cfg = dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, url=os.path.abspath(cfg.data.url))
        )
    storage_path, storage_fs, run_url = _storage(cfg)
    init = initialise(cfg)
    if cfg.run.num_workers > init["files"]:
        raise ValueError(
            f"run.num_workers={cfg.run.num_workers} but the data has only {init['files']} Parquet files; "
            "workers shard by file, so use at most as many workers as files"
        )
    resume = None
    if cfg.run.resume_from:
        resume = (
            Checkpoint(cfg.run.resume_from, filesystem=storage_fs)
            if storage_fs
            else Checkpoint(cfg.run.resume_from)
        )
        check_checkpoint_shape(resume, cfg.model.n_clusters, init["dim"])
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"train": to_dict(cfg), "init": init, "run_url": run_url},
        scaling_config=ScalingConfig(
            num_workers=cfg.run.num_workers,
            use_gpu=cfg.run.use_gpu,
            resources_per_worker={"CPU": cfg.run.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[progress_callback(cfg.optim.epochs)],
        ),
        resume_from_checkpoint=resume,
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    artifact_url = f"{run_url}/{cfg.run.name}/model"
    return TrainResult(
        artifact_url=artifact_url,
        checkpoint_path=result.checkpoint.path if result.checkpoint else None,
        metrics=dict(result.metrics or {}),
    )


def progress_callback(total_epochs: int):
    """A Ray Train callback printing one progress line per epoch (loss, energy, dead
    prototypes, throughput); it runs in the train controller, whose output Ray streams to
    the driver's console."""
    from ray.train import UserCallback

    class Progress(UserCallback):
        def after_report(self, run_context, metrics, checkpoint) -> None:
            m = metrics[0] if metrics else {}
            if "epoch" not in m:
                return
            done = m["epoch"] + 1
            bar = "#" * int(20 * done / total_epochs)
            print(
                f"[clam-dist train] [{bar:<20s}] epoch {done}/{total_epochs} loss {m['loss']:.4f} "
                f"energy {m['mean_energy']:.3f} dead {m['dead_prototypes']} "
                f"{m['rows_per_s_total']:,.0f} rows/s ({m['workers']} workers)",
                flush=True,
            )

    return Progress()


def check_checkpoint_shape(checkpoint, k: int, d: int) -> None:
    with checkpoint.as_directory() as ckdir:
        state = json.loads((Path(ckdir) / "state.json").read_text())
    if (state["k"], state["d"]) != (k, d):
        raise ValueError(
            f"resume checkpoint has k={state['k']}, d={state['d']}; this run has k={k}, d={d}"
        )


# --------------------------------------------------------------------------- worker side


def _save_checkpoint(
    directory: str,
    protos,
    optimizer,
    scheduler,
    kstate,
    epoch: int,
    cfg_dict: dict,
    init: dict,
    history: list[dict],
):
    from safetensors.torch import save_file

    save_file(
        {"prototypes": protos.detach().contiguous().cpu(), "kmeans_counts": kstate.cpu()},
        os.path.join(directory, "prototypes.safetensors"),
    )
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        os.path.join(directory, "optim.pt"),
    )
    state = {
        "epoch": epoch,
        "k": int(protos.shape[0]),
        "d": int(protos.shape[1]),
        "config": cfg_dict,
        "beta": init["beta"],
        "data_position": {"next_epoch": epoch + 1, "unit": "epoch"},
        "history": history,  # per-epoch metrics, so a resumed run keeps its whole curve
    }
    Path(directory, "state.json").write_text(json.dumps(state))


def _load_checkpoint(
    directory: str, protos, optimizer, scheduler, kstate
) -> tuple[int, list[dict]]:
    from safetensors.torch import load_file

    tensors = load_file(os.path.join(directory, "prototypes.safetensors"))
    if tuple(tensors["prototypes"].shape) != tuple(protos.shape):
        raise ValueError(
            f"checkpoint prototypes {tuple(tensors['prototypes'].shape)} != run's {tuple(protos.shape)}"
        )
    with torch.no_grad():
        protos.copy_(tensors["prototypes"])
        kstate.copy_(tensors["kmeans_counts"])
    # weights_only: optimizer state is tensors and numbers; never unpickle arbitrary objects.
    opt = torch.load(os.path.join(directory, "optim.pt"), weights_only=True)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    state = json.loads(Path(directory, "state.json").read_text())
    return int(state["epoch"]) + 1, list(state.get("history", []))


def train_loop(loop_config: dict) -> None:
    import ray.train
    import torch.distributed as dist

    from clam_dist.data.stream import iter_batches, shard_files
    from clam_dist.models.am import energy, nearest_prototypes
    from clam_dist.models.kmeans import apply_lloyd, apply_minibatch, batch_sums_counts
    from clam_dist.train.step import row_keys, row_masks, scaled_local_loss, shared_mask

    cfg: TrainConfig = from_dict(TrainConfig, loop_config["train"])
    init = loop_config["init"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    distributed = dist.is_available() and dist.is_initialized() and world > 1
    device = torch.device("cuda" if cfg.run.use_gpu and torch.cuda.is_available() else "cpu")

    def allreduce(t: torch.Tensor, op=None) -> torch.Tensor:
        if distributed:
            dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
        return t

    source = make_source(cfg)
    mean = torch.tensor(init["mean"], dtype=torch.float32, device=device)
    scale = torch.tensor(init["scale"], dtype=torch.float32, device=device)
    fill = torch.tensor(init["fill"], dtype=torch.float32, device=device)
    protos = torch.nn.Parameter(
        torch.tensor(init["prototypes"], dtype=torch.float32, device=device)
    )
    k, d = protos.shape
    kcounts = torch.zeros(k, dtype=torch.float32, device=device)
    optimizer = torch.optim.Adam([protos], lr=cfg.optim.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=cfg.optim.plateau_factor, patience=cfg.optim.plateau_patience
    )
    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckdir:
            start_epoch, history = _load_checkpoint(ckdir, protos, optimizer, scheduler, kcounts)

    def assert_identical(where: str) -> float:
        """Prototypes must be bit-identical on every worker; returns the max divergence."""
        hi, lo = protos.detach().clone(), protos.detach().clone()
        allreduce(hi, dist.ReduceOp.MAX if distributed else None)
        allreduce(lo, dist.ReduceOp.MIN if distributed else None)
        gap = float((hi - lo).abs().max())
        if gap != 0.0:
            raise RuntimeError(f"prototypes differ across workers by {gap} {where}")
        return gap

    assert_identical("at the start")
    batch_rows = cfg.optim.batch_size if cfg.optim.batch_size > 0 else 1 << 40
    counts = source.file_row_counts()
    run_url = loop_config["run_url"]
    am = cfg.model
    for epoch in range(start_epoch, cfg.optim.epochs):
        if cfg.run.fail_at_epoch == epoch and rank == 0:
            _maybe_die_once(run_url, cfg, epoch)
        t_epoch = time.perf_counter()
        my_files = shard_files(source.files(), rank, world, epoch, cfg.run.seed, True)
        local_rows_total = sum(counts[f] for f in my_files)
        n_steps = torch.tensor(
            [math.ceil(local_rows_total / batch_rows) if local_rows_total else 0], device=device
        )
        allreduce(n_steps, dist.ReduceOp.MAX if distributed else None)
        stream = iter_batches(
            source, min(batch_rows, 1 << 22), rank, world, epoch, cfg.run.seed, shuffle=True
        )
        buffer_x, buffer_ids = [], []
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss*rows, rows, energy, dead
        assign_counts = torch.zeros(k, device=device)
        lloyd_sums = torch.zeros_like(protos.detach())
        lloyd_counts = torch.zeros(k, device=device)
        t_compute = t_comm = 0.0
        for step in range(int(n_steps.item())):
            xb, ids = _take(stream, buffer_x, buffer_ids, batch_rows)
            x = (
                ((torch.from_numpy(xb).to(device) - mean) / scale)
                if len(xb)
                else torch.zeros((0, d), device=device)
            )
            n_local = torch.tensor([float(x.shape[0])], device=device)
            t0 = time.perf_counter()
            allreduce(n_local)
            global_rows = max(1, int(n_local.item()))
            t_comm += time.perf_counter() - t0
            t0 = time.perf_counter()
            if am.method == "clam":
                if cfg.model.shared_every and (epoch + 1) % cfg.model.shared_every == 0:
                    mask = shared_mask(x.shape[0], d, am.mask_ratio, epoch, step, cfg.run.seed).to(
                        device
                    )
                else:
                    mask = row_masks(row_keys(ids), d, am.mask_ratio, epoch, cfg.run.seed).to(
                        device
                    )
                mask = mask if am.mask_ratio > 0 else None
                loss = scaled_local_loss(
                    protos,
                    x,
                    mask,
                    fill,
                    init["beta"],
                    am.alpha,
                    am.steps,
                    am.metric,
                    world,
                    global_rows,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                t_compute += time.perf_counter() - t0
                t0 = time.perf_counter()
                grad = protos.grad if protos.grad is not None else torch.zeros_like(protos)
                allreduce(grad)
                grad /= world
                protos.grad = grad
                t_comm += time.perf_counter() - t0
                optimizer.step()
                sums[0] += float(loss.detach()) * global_rows / world
            else:
                s, c, _ = (
                    batch_sums_counts(x, protos.detach(), am.metric)
                    if len(x)
                    else (torch.zeros_like(protos), torch.zeros(k, device=device), None)
                )
                t_compute += time.perf_counter() - t0
                t0 = time.perf_counter()
                allreduce(s)
                allreduce(c)
                t_comm += time.perf_counter() - t0
                with torch.no_grad():
                    if cfg.model.kmeans_algorithm == "minibatch":
                        new, kcounts_new = apply_minibatch(
                            protos.detach(), kcounts, s, c, am.metric
                        )
                        protos.copy_(new)
                        kcounts.copy_(kcounts_new)
                    else:
                        lloyd_sums += s
                        lloyd_counts += c
            with torch.no_grad():
                if len(x):
                    d2, idx = nearest_prototypes(x, protos.detach(), am.metric)
                    assign_counts += torch.bincount(idx[:, 0], minlength=k).float()
                    sums[1] += x.shape[0]
                    sums[2] += float(
                        energy(x, protos.detach(), init["beta"], am.metric).double().sum()
                    )
                    if am.method != "clam":
                        sums[0] += float(d2.double().sum())
        if am.method == "kmeans" and cfg.model.kmeans_algorithm == "lloyd":
            with torch.no_grad():
                protos.copy_(apply_lloyd(protos.detach(), lloyd_sums, lloyd_counts, am.metric))
        allreduce(sums)
        allreduce(assign_counts)
        rows = max(1.0, float(sums[1]))
        epoch_loss = float(sums[0]) / rows  # mean per-row loss (ClAM) or inertia per row (k-means)
        if am.method == "clam":
            scheduler.step(epoch_loss)
        gap = assert_identical(f"after epoch {epoch}")
        seconds = time.perf_counter() - t_epoch
        metrics = {
            "epoch": epoch,
            "loss": epoch_loss,
            "mean_energy": float(sums[2]) / rows,
            "dead_prototypes": int((assign_counts == 0).sum()),
            "rows": int(rows),
            "rows_per_s_total": rows / seconds,
            "rows_per_s_worker": rows / seconds / world,
            "compute_s": t_compute,
            "allreduce_s": t_comm,
            "allreduce_bytes_per_step": protos.numel() * 4
            if am.method == "clam"
            else (k * d + k) * 4,
            "steps": int(n_steps.item()),
            "workers": world,
            "prototype_divergence": gap,
            "lr": optimizer.param_groups[0]["lr"],
        }
        history.append(metrics)
        last = epoch == cfg.optim.epochs - 1
        if rank == 0 and last:
            _write_artifact(cfg, init, protos, run_url, history)
        if (epoch + 1) % max(1, cfg.run.checkpoint_every) == 0 or last:
            with tempfile.TemporaryDirectory() as tmp:
                if rank == 0:
                    _save_checkpoint(
                        tmp,
                        protos,
                        optimizer,
                        scheduler,
                        kcounts,
                        epoch,
                        loop_config["train"],
                        init,
                        history,
                    )
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None,
                )
        else:
            ray.train.report(metrics)


def _take(stream, buffer_x: list, buffer_ids: list, rows: int):
    """Up to ``rows`` rows from the shard stream (batches are re-cut to the step size)."""
    have = sum(len(b) for b in buffer_x)
    while have < rows:
        try:
            b = next(stream)
        except StopIteration:
            break
        buffer_x.append(b.x)
        buffer_ids.append(b.ids)
        have += len(b.x)
    if not buffer_x:
        return np.zeros((0, 0), np.float32), np.zeros(0)
    x, ids = np.concatenate(buffer_x), np.concatenate(buffer_ids)
    buffer_x.clear()
    buffer_ids.clear()
    if len(x) > rows:
        buffer_x.append(x[rows:])
        buffer_ids.append(ids[rows:])
    return x[:rows], ids[:rows]


def _maybe_die_once(run_url: str, cfg: TrainConfig, epoch: int) -> None:
    """Failure injection: the first time only (a marker in storage), kill this process."""
    from clam_dist.data.source import open_filesystem

    fs, path = open_filesystem(
        f"{run_url}/{cfg.run.name}/{FAILURE_MARKER}", cfg.data.storage_options
    )
    if fs.exists(path):
        return
    fs.pipe(path, f"killed at epoch {epoch}".encode())
    os._exit(1)


def _write_artifact(
    cfg: TrainConfig, init: dict, protos, run_url: str, history: list[dict]
) -> None:
    from clam_dist.artifacts import ModelArtifact, save_artifact

    art = ModelArtifact(
        method=cfg.model.method,
        prototypes=protos.detach().cpu().numpy(),
        n_features=len(init["mean"]),
        beta=init["beta"],
        alpha=cfg.model.alpha if cfg.model.method == "clam" else 1.0,
        steps=cfg.model.steps if cfg.model.method == "clam" else 0,
        metric=cfg.model.metric,
        scaler_mean=np.asarray(init["mean"], np.float32),
        scaler_scale=np.asarray(init["scale"], np.float32),
        meta={
            "final_metrics": history[-1],
            "loss_history": [h["loss"] for h in history],
            "trained_with": "ray-train",
            "config": to_dict(cfg),
        },
    )
    save_artifact(art, f"{run_url}/{cfg.run.name}/model", cfg.data.storage_options)
