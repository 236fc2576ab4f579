"""The per-worker training loop run by Ray Train's TorchTrainer (one process per worker).

Each worker holds the prototypes and an Adam optimizer, streams its lanes (file shards),
computes its share of the global-batch loss and all-reduces the prototype gradient with
an explicit ``torch.distributed.all_reduce`` (gloo on CPU, nccl on GPU). That is exactly
what DDP does for a single parameter tensor, minus the bucketing machinery, and it lets
the loop time the all-reduce apart from the compute and count its bytes.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import defaultdict

import numpy as np
import torch

from clam_dist.config import from_dict
from clam_dist.secrets import persistable
from clam_dist.train import checkpoint as ckpt
from clam_dist.train.config import TrainConfig
from clam_dist.train.objectives import make_objective, total_epochs
from clam_dist.train.sources import make_source
from clam_dist.train.step import (
    LaneStream,
    batch_mask,
    fingerprint,
    lr_factor,
    prefetch_steps,
    resolve_lanes,
    scale_to_global,
    worker_lanes,
)

FAILURE_MARKER = "_failure_injected"


class Comm:
    """all_reduce that is a no-op on one worker and accounts bytes and seconds per kind
    ("step": what training needs each step; "verify"; "metrics")."""

    def __init__(self, distributed: bool, device: torch.device, barrier_timing: bool):
        self.distributed, self.device, self.barrier_timing = distributed, device, barrier_timing
        self.bytes: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)
        self.wait_s = 0.0

    def all_reduce(self, t: torch.Tensor, op: str = "sum", kind: str = "step") -> torch.Tensor:
        if not self.distributed:
            return t
        import torch.distributed as dist

        t = t.to(self.device)
        if self.barrier_timing and kind == "step":
            t0 = time.perf_counter()
            dist.barrier()  # stragglers' wait, so the timed all-reduce is transfer only
            self.wait_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
        self.seconds[kind] += time.perf_counter() - t0
        self.bytes[kind] += t.numel() * t.element_size()
        return t

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank ``src``'s tensor on every worker (a no-op on one worker)."""
        if not self.distributed:
            return t
        import torch.distributed as dist

        t = t.to(self.device).contiguous()
        dist.broadcast(t, src=src)
        return t


def train_loop(loop_config: dict) -> None:
    import ray.train
    import torch.distributed as dist

    from clam_dist.models.am import energy, nearest_prototypes
    from clam_dist.models.kmeans import apply_lloyd, apply_minibatch, batch_sums_counts

    cfg: TrainConfig = from_dict(TrainConfig, loop_config["train"])
    init, plan, run_url = loop_config["init"], loop_config["plan"], loop_config["run_url"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = torch.device("cuda" if cfg.run.use_gpu and torch.cuda.is_available() else "cpu")
    comm = Comm(
        dist.is_available() and dist.is_initialized() and world > 1, device, cfg.run.barrier_timing
    )
    am, opt_cfg = cfg.model, cfg.optim
    n_epochs = total_epochs(cfg)

    source = make_source(cfg)
    mean, scale = (
        torch.tensor(init[key], dtype=torch.float32, device=device) for key in ("mean", "scale")
    )
    k, d_in = len(init["prototypes"]), len(init["mean"])
    # k-means updates its centres in closed form; every other method is gradient-trained
    # through an objective (train/objectives.py) with ONE flat all-reduced gradient.
    objective = make_objective(cfg, init, device, loop_config.get("sample"))
    protos = (
        torch.tensor(init["prototypes"], dtype=torch.float32, device=device)
        if objective is None
        else None
    )
    kcounts = torch.zeros(k, device=device)  # mini-batch k-means: rows ever assigned per centre
    lloyd_sums = torch.zeros(k, d_in, device=device)
    lloyd_counts = torch.zeros(k, device=device)
    epoch = step_in_epoch = global_step = 0
    epoch_sums = torch.zeros(3, dtype=torch.float64)  # global loss sum, rows, energy sum
    history: list[dict] = []
    verified = 0

    def new_optimizer():
        params = objective.trainable() if objective is not None else [torch.zeros(1)]
        opt = torch.optim.Adam(params, lr=opt_cfg.lr)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=opt_cfg.plateau_factor, patience=opt_cfg.plateau_patience
        )
        return opt, sched

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and cfg.run.resume_from:
        checkpoint = ckpt.open_checkpoint(cfg.run.resume_from, cfg.data.storage_options)
    loaded = None
    if checkpoint is not None:
        with checkpoint.as_directory() as ckdir:
            tensors, state = ckpt.load(ckdir)
        ckpt.check_shape(state, k, d_in)
        ckpt.check_method(state, am.method)
        if objective is not None:
            objective.load_state(state.get("objective", {}))
            objective.load_state_tensors(tensors)
        else:
            protos.copy_(tensors["prototypes"])
            kcounts.copy_(tensors["kmeans_counts"])
            lloyd_sums.copy_(tensors["lloyd_sums"])
            lloyd_counts.copy_(tensors["lloyd_counts"])
        epoch, step_in_epoch = state["data_position"]["epoch"], state["data_position"]["step"]
        global_step = state["global_step"]
        epoch_sums = torch.tensor(state["epoch_sums"], dtype=torch.float64)
        history = list(state["history"])
        loaded = (tensors, state)
    # Built after the objective's state is restored: which parameters train depends on
    # the phase (DCAM pretraining trains the autoencoder only).
    optimizer, plateau = new_optimizer()
    if loaded is not None:
        tensors, state = loaded
        ckpt.optimizer_from_files(optimizer, tensors, state["optimizer"])
        plateau.load_state_dict(state["plateau"])

    def current_prototypes() -> torch.Tensor:
        return objective.prototypes() if objective is not None else protos

    def all_parameters() -> torch.Tensor:
        if objective is None:
            return protos
        return torch.cat([p.detach().reshape(-1) for p in objective.module.parameters()])

    def check_identical(where: str) -> None:
        """Bit-identical parameters on every worker, else fail loudly."""
        nonlocal verified
        fp = comm.all_reduce(fingerprint(all_parameters()), "max", kind="verify").cpu()
        if int(fp[0]) != -int(fp[1]):
            gap = parameter_divergence(comm, all_parameters())
            raise RuntimeError(
                f"parameters differ across workers {where} (fingerprints disagree; "
                f"largest absolute difference {gap:.3g})"
            )
        verified += 1

    def save_checkpoint(directory: str) -> None:
        opt_tensors, opt_meta = ckpt.optimizer_to_files(optimizer)
        if objective is None:
            tensors = {
                "prototypes": protos,
                "kmeans_counts": kcounts,
                "lloyd_sums": lloyd_sums,
                "lloyd_counts": lloyd_counts,
            }
        else:
            # a copy: safetensors refuses two names for one storage
            tensors = {"prototypes": objective.prototypes().clone(), **objective.state_tensors()}
        ckpt.save(
            directory,
            {**tensors, **opt_tensors},
            {
                "k": k,
                "d": d_in,
                "d_model": int(current_prototypes().shape[1]),
                "method": am.method,
                "global_step": global_step,
                "data_position": {
                    "epoch": epoch,
                    "step": step_in_epoch,
                    "lanes": n_lanes,
                    "lane_batch": lane_batch,
                    "seed": cfg.run.seed,
                },
                "epoch_sums": epoch_sums.tolist(),
                "optimizer": opt_meta,
                "plateau": plateau.state_dict(),
                "objective": objective.state() if objective is not None else {},
                "init": {key: v for key, v in init.items() if key != "prototypes"},
                "config": persistable(loop_config["train"]),  # no credentials at rest
                "history": history,
            },
        )

    check_identical("at step 0 (after the broadcast initialisation)")
    n_lanes, lane_batch = resolve_lanes(cfg.data.lanes, world, opt_cfg.batch_size)
    lanes = worker_lanes(rank, world, n_lanes)
    row_counts = source.file_row_counts()
    steps_per_epoch, total_steps = plan["steps_per_epoch"], plan["total_steps"]
    window = _Window(k, world, comm)
    stopped = False
    while epoch < n_epochs and global_step < total_steps and not stopped:
        if objective is not None and objective.begin_epoch(epoch, comm, rank):
            optimizer, plateau = new_optimizer()  # a new phase (DCAM: the joint loss)
            check_identical(f"at the start of epoch {epoch} (new phase)")
        phase = objective.phase(epoch) if objective is not None else "train"
        streams = [
            LaneStream(
                source,
                lane,
                n_lanes,
                epoch,
                cfg.run.seed,
                min(lane_batch, 65_536),
                step_in_epoch * lane_batch if step_in_epoch else 0,
                row_counts,
            )
            for lane in lanes
        ]
        # The next batches are read in a thread while this one computes (bounded, closed
        # below; an early exit drops it and its finaliser stops the thread).
        reader = prefetch_steps(streams, lane_batch, steps_per_epoch[epoch] - step_in_epoch)
        for step in range(step_in_epoch, steps_per_epoch[epoch]):
            _maybe_fail(cfg, run_url, rank, world, epoch, step, global_step)
            xb, ids = next(reader)
            x = (torch.from_numpy(xb).to(device) - mean) / scale
            t0 = time.perf_counter()
            global_rows = int(comm.all_reduce(torch.tensor([float(len(x))]), kind="step").item())
            window.comm_s += time.perf_counter() - t0
            # Monitoring uses the prototypes the step starts from (no extra sync needed).
            t0 = time.perf_counter()
            with torch.no_grad():
                if len(x) and (objective is None or objective.monitoring()):
                    zx = objective.model_space(x) if objective is not None else x
                    beta_now = objective.beta if objective is not None else float(init["beta"])
                    d2, idx = nearest_prototypes(zx, current_prototypes(), am.metric)
                    window.assign += torch.bincount(idx[:, 0], minlength=k).to(window.assign)
                    window.sums[2] += float(
                        energy(zx, current_prototypes(), beta_now, am.metric).double().sum()
                    )
                if len(x):
                    window.sums[1] += len(x)
            window.monitor_s += time.perf_counter() - t0
            if objective is not None:
                for group in optimizer.param_groups:
                    if opt_cfg.schedule != "plateau":
                        group["lr"] = opt_cfg.lr * lr_factor(
                            global_step,
                            total_steps,
                            opt_cfg.schedule,
                            opt_cfg.warmup_steps,
                            opt_cfg.min_lr_factor,
                        )
                t0 = time.perf_counter()
                width = objective.mask_width() if phase != "pretrain" else None
                mask = (
                    None
                    if width is None
                    else batch_mask(
                        ids, width, am.mask_ratio, am.shared_every, epoch, step, cfg.run.seed
                    )
                )
                mask = None if mask is None else mask.to(device)
                # Collectives inside the loss (DCAM's global latent fill) run on EVERY
                # worker, also one whose share of this step is empty.
                context = objective.batch_context(x, mask, comm, epoch)
                params = objective.trainable()
                if len(x):
                    loss = scale_to_global(
                        objective.mean_loss(x, mask, context, epoch),
                        len(x),
                        world,
                        max(1, global_rows),
                    )
                else:  # keep every parameter in the graph so the all-reduce has its grad
                    loss = sum((p * 0).sum() for p in params)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                window.compute_s += time.perf_counter() - t0
                t0 = time.perf_counter()
                finite = all_reduce_mean_grads(params, comm, world)
                window.comm_s += time.perf_counter() - t0
                # The gradient is all-reduced, so every worker reaches the same verdict
                # without another collective; nothing non-finite is ever applied or saved.
                check_finite(finite, "loss gradient", am.method, global_step, epoch)
                if global_rows:
                    optimizer.step()
                    check_finite(
                        bool(torch.isfinite(all_parameters()).all()),
                        "parameters after the optimizer step",
                        am.method,
                        global_step,
                        epoch,
                    )
                window.sums[0] += float(loss.detach()) * global_rows / world
            else:
                t0 = time.perf_counter()
                if len(x):
                    s, c, _ = batch_sums_counts(x, protos, am.metric)
                    window.sums[0] += float(d2.double().sum())
                else:
                    s, c = torch.zeros_like(protos), torch.zeros(k, device=device)
                window.compute_s += time.perf_counter() - t0
                t0 = time.perf_counter()
                sc = comm.all_reduce(torch.cat([s, c[:, None]], dim=1), kind="step")
                window.comm_s += time.perf_counter() - t0
                s, c = sc[:, :d_in], sc[:, d_in]
                if am.kmeans_algorithm == "minibatch":
                    new, kcounts_new = apply_minibatch(protos, kcounts, s, c, am.metric)
                    protos.copy_(new)
                    kcounts.copy_(kcounts_new)
                else:
                    lloyd_sums += s
                    lloyd_counts += c
            window.steps += 1
            global_step += 1
            step_in_epoch = step + 1
            if cfg.run.verify_every and global_step % cfg.run.verify_every == 0:
                check_identical(f"after step {global_step}")
            end_epoch = step_in_epoch == steps_per_epoch[epoch] or global_step >= total_steps
            epoch_extra: dict = {}
            if end_epoch and objective is not None:
                epoch_extra, stopped = objective.end_epoch(epoch, comm, rank)
            last = stopped or global_step >= total_steps or (end_epoch and epoch + 1 >= n_epochs)
            ckpt_now = (
                last
                or (
                    cfg.run.checkpoint_every_steps
                    and global_step % cfg.run.checkpoint_every_steps == 0
                )
                or (
                    end_epoch
                    and cfg.run.checkpoint_every
                    and (epoch + 1) % cfg.run.checkpoint_every == 0
                )
            )
            if not (ckpt_now or end_epoch or global_step % max(1, cfg.run.report_every) == 0):
                continue
            metrics = window.reduce(rank)
            epoch_sums += torch.tensor(window.last_sums, dtype=torch.float64)
            window.reset()
            metrics.update(
                epoch=epoch,
                step=global_step,
                total_steps=total_steps,
                workers=world,
                lr=optimizer.param_groups[0]["lr"],
                **({"phase": phase} if phase != "train" else {}),
            )
            if end_epoch:
                epoch_loss = float(epoch_sums[0] / max(1.0, float(epoch_sums[1])))
                metrics["epoch_loss"] = epoch_loss
                metrics.update(epoch_extra)
                if objective is None and am.kmeans_algorithm == "lloyd":
                    protos.copy_(apply_lloyd(protos, lloyd_sums, lloyd_counts, am.metric))
                    lloyd_sums.zero_()
                    lloyd_counts.zero_()
                if objective is not None and opt_cfg.schedule == "plateau":
                    plateau.step(epoch_loss)
                check_identical(f"at the end of epoch {epoch}")
                epoch, step_in_epoch = epoch + 1, 0
                epoch_sums.zero_()
            metrics["verified_steps"] = verified  # fingerprint checks so far (incl. step 0)
            # Measured, not assumed: max |difference| of any parameter between workers.
            metrics["prototype_divergence"] = parameter_divergence(comm, all_parameters())
            history.append(metrics)
            if last:
                if objective is not None:
                    objective.finalize()  # DCAM: the selected (bounded) state
                if rank == 0:
                    _write_artifact(cfg, init, objective, protos, run_url, history)
            if ckpt_now:
                with tempfile.TemporaryDirectory() as tmp:
                    if rank == 0:
                        save_checkpoint(tmp)
                    ray.train.report(
                        metrics,
                        checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None,
                    )
            else:
                ray.train.report(metrics)
            if end_epoch or last:
                break  # next epoch (fresh lane streams), or done
        else:  # an epoch with no steps (cannot happen with non-empty data): move on
            epoch, step_in_epoch = epoch + 1, 0
        reader.close()


def parameter_divergence(comm: Comm, params: torch.Tensor) -> float:
    """The largest absolute difference of any parameter between any two workers: the
    elementwise max over workers minus the min (two MAX all-reduces). 0.0 on one worker."""
    flat = params.detach().reshape(-1).float()
    hi = comm.all_reduce(flat.clone(), "max", kind="verify")
    neg_lo = comm.all_reduce(flat.neg(), "max", kind="verify")
    return float((hi + neg_lo).max()) if flat.numel() else 0.0


class TrainingDiverged(FloatingPointError):
    """A step produced a non-finite gradient or parameter; training stops before applying
    it, so every checkpoint already written holds finite values."""


def check_finite(finite: bool, what: str, method: str, step: int, epoch: int) -> None:
    if not finite:
        raise TrainingDiverged(
            f"{method}: non-finite {what} at step {step} (epoch {epoch}); training stopped, "
            "the last checkpoint holds the last finite state (lower optim.lr or model.beta)"
        )


def all_reduce_mean_grads(params: list[torch.nn.Parameter], comm: Comm, world: int) -> bool:
    """Average every parameter's gradient over the workers in ONE flat all-reduce (what
    DDP's buckets do, in one bucket: the models here are small). Returns whether the
    averaged gradient is finite (the same answer on every worker)."""
    if not params:
        return True
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    )
    flat = comm.all_reduce(flat, kind="step") / world
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    return bool(torch.isfinite(flat).all())


class _Window:
    """Local sums over the steps since the last report, reduced in ONE all-reduce."""

    def __init__(self, k: int, world: int, comm: Comm):
        self.k, self.world, self.comm = k, world, comm
        self.reset()

    def reset(self) -> None:
        self.sums = [0.0, 0.0, 0.0]  # loss sum (global share), rows, energy sum
        self.assign = torch.zeros(self.k, dtype=torch.float64)
        self.steps = 0
        self.compute_s = self.comm_s = self.monitor_s = 0.0
        self.t0 = time.perf_counter()
        self.bytes0, self.wait0 = self.comm.bytes["step"], self.comm.wait_s

    def reduce(self, rank: int) -> dict:
        comm = self.comm
        seconds = time.perf_counter() - self.t0
        per_worker = torch.zeros(self.world, dtype=torch.float64)
        per_worker[rank] = self.sums[1] / max(seconds, 1e-9)
        bytes_per_step = (comm.bytes["step"] - self.bytes0) / max(1, self.steps)
        wait = comm.wait_s - self.wait0
        packed = torch.cat([torch.tensor(self.sums, dtype=torch.float64), self.assign, per_worker])
        packed = comm.all_reduce(packed, kind="metrics").cpu()
        loss_sum, rows, energy_sum = packed[:3].tolist()
        self.last_sums = [loss_sum, rows, energy_sum]
        steps = max(1, self.steps)
        return {
            "loss": loss_sum / max(1.0, rows),
            "mean_energy": energy_sum / max(1.0, rows),
            "dead_prototypes": int((packed[3 : 3 + self.k] == 0).sum()),
            "rows": int(rows),
            "window_steps": self.steps,
            "rows_per_s_total": rows / max(seconds, 1e-9),
            "rows_per_s_worker": packed[3 + self.k :].tolist(),
            "compute_ms_per_step": 1000 * self.compute_s / steps,
            "allreduce_ms_per_step": 1000 * (self.comm_s - wait) / steps,
            "wait_ms_per_step": 1000 * wait / steps,
            "monitor_ms_per_step": 1000 * self.monitor_s / steps,
            "allreduce_bytes_per_step": int(bytes_per_step),
        }


def _maybe_fail(
    cfg: TrainConfig, run_url: str, rank: int, world: int, epoch: int, step: int, global_step: int
) -> None:
    """Failure injection for tests: the last worker's process dies, the first time only
    (a marker file in the run's storage says it already happened)."""
    due = global_step == cfg.run.fail_at_step or (cfg.run.fail_at_epoch == epoch and step == 0)
    if not due or rank != world - 1:
        return
    from clam_dist.data.source import open_filesystem

    fs, path = open_filesystem(
        f"{run_url}/{cfg.run.name}/{FAILURE_MARKER}", cfg.data.storage_options
    )
    if fs.exists(path):
        return
    # Ray Train's controller registers a reported checkpoint asynchronously: on a loaded
    # machine a worker dying right after a report could beat that registration, and the
    # run would resume from an older checkpoint than the test (or drill) names. Die only
    # once every report so far is committed, so where it resumes is not a race.
    import ray.train

    ray.train.get_all_reported_checkpoints(
        consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED
    )
    fs.pipe(path, f"killed at epoch {epoch}, global step {global_step}".encode())
    os._exit(1)


def _write_artifact(
    cfg: TrainConfig, init: dict, objective, protos, run_url: str, history: list[dict]
) -> None:
    from clam_dist.artifacts import ModelArtifact, save_artifact
    from clam_dist.config import to_dict

    if objective is not None:
        fields = objective.artifact_fields()
        prototypes = objective.prototypes()
    else:  # k-means: nearest centre, no dynamics
        fields = {"beta": init["beta"], "alpha": 1.0, "steps": 0, "metric": cfg.model.metric}
        prototypes = protos
    meta = {
        **fields.pop("meta", {}),
        "final_metrics": history[-1],
        "loss_history": [h["epoch_loss"] for h in history if "epoch_loss" in h],
        "trained_with": "ray-train",
        "config": persistable(to_dict(cfg)),  # an artifact is shared: no credentials
    }
    art = ModelArtifact(
        method=cfg.model.method,
        prototypes=prototypes.detach().cpu().numpy(),
        n_features=len(init["mean"]),
        scaler_mean=np.asarray(init["mean"], np.float32),
        scaler_scale=np.asarray(init["scale"], np.float32),
        meta=meta,
        **fields,
    )
    save_artifact(art, f"{run_url}/{cfg.run.name}/model", cfg.data.storage_options)
