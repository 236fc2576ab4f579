"""Scaling experiment: the Ray Train trainer with 1 and 2 (or more) workers on a generated
mixture, beside the BARE step (the same update on in-memory batches in this process, one
torch thread, no Ray, reader, monitor or reports: clam_dist/train/bare_step.py), all in
one run; prints rows/s, the trainer's share of the bare step's rate at 1 worker, the
speed-up over 1 worker, per-step compute vs all-reduce time and bytes all-reduced per
step, and writes JSON. The all-reduce is one flat torch.distributed.all_reduce of every
gradient (what DDP does, in one bucket), started asynchronously: the monitor (the per-step
energy / nearest-prototype bookkeeping for the metrics) runs while it is in flight, and
"allreduce" is the wait left after it (transfer plus waiting for the slower worker).

    python jobs/scaling.py [--n 200000 --d 64 --k 64 --batch 4096 --epochs 2 --workers 1,2]
        [--method clam|kmeans|attention|dcam]   (dcam: the last epoch is a joint-loss epoch)
        [--set section.key=value ...]           (any other training setting)
        [--ceiling]   (also the bare step in 1 and in N processes at once: what the cores allow)
        [--nodes 1,2,3]   (also each N on a real N-node Ray cluster on this host, on loopback)

--nodes LIST: for each N, a local multi-node cluster (clam_dist.local_cluster: a head with
no CPUs plus N worker raylets of one CPU each, so one training worker per node) runs the
same training with N workers, after the worker sweep on a plain local Ray, whose rows stay
in the same table: the "vs 1 node" column is each cluster row's rows/s over the plain
single-node row with as many workers. On one host the nodes share its cores, so that ratio
measures what going multi-node costs (separate raylets and object stores, the all-reduce
between processes of different nodes), not a speed-up. Per-node rows come from the run's
metrics["per_node"] when the trainer reports them ("-" otherwise).

Settings that differ from the trainer's defaults (for the method) are stated in the
printed header and in the JSON ("non_default_settings"): by default one metrics window
per epoch (run.report_every) and the cross-worker prototype check off between epoch ends
(run.verify_every=0), one checkpoint at the end, plus any --set. Paths and the per-row
worker count and batch (in the table) are left out of that list.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import ray

from clam_dist.commands.make_dataset import write_mixture
from clam_dist.config import load_config, to_dict
from clam_dist.local_cluster import local_cluster
from clam_dist.train.bare_step import bare_step_of_run
from clam_dist.train.config import TrainConfig
from clam_dist.train.trainer import run_training


def _bare_in_process(job: tuple) -> float:
    """One process's bare step (spawned: its own interpreter, one torch thread)."""
    import torch

    from clam_dist.train.bare_step import bare_step_rows_per_s
    from clam_dist.train.objectives import total_epochs

    cfg, init, x, sample, batch = job
    torch.set_num_threads(1)
    first = total_epochs(cfg) - 1
    return bare_step_rows_per_s(cfg, init, x, batch, first_epoch=first, sample=sample)


def hardware_ceiling(cfg: TrainConfig, n_rows: int, workers: int, batch: int) -> dict:
    """What the cores allow with no trainer at all: the bare step alone in one process,
    then in ``workers`` processes at once (each on its share of the rows, at the
    per-worker batch), rows/s summed. Their ratio is the best speed-up any trainer could
    show here."""
    import multiprocessing

    from clam_dist.data.stats import sample_rows
    from clam_dist.train.sources import init_sample, initialise, make_source, standardize

    sample = init_sample(cfg)
    init = initialise(cfg, sample)
    x = standardize(
        sample_rows(make_source(cfg), n_rows, cfg.run.seed).x, init["mean"], init["scale"]
    )
    worker_sample = standardize(sample.x, init["mean"], init["scale"])
    shares = np.array_split(x, workers)
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        one = pool.map(_bare_in_process, [(cfg, init, shares[0], worker_sample, batch)])[0]
        jobs = [(cfg, init, share, worker_sample, batch) for share in shares]
        together = pool.map(_bare_in_process, jobs)
    return {"one_process": one, "processes": together, "speedup": sum(together) / one}


# Varied per row (the table shows them) or paths of this run: not "settings" to state.
_PER_ROW_OR_PATH = ("data.url", "run.storage_path", "run.name", "run.num_workers")


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def non_default_settings(cfg: TrainConfig, method: str) -> dict:
    """Every setting of ``cfg`` that differs from the trainer's default for ``method``
    (the default config built from the same data and method), paths and per-row values
    left out: what a reader must know to compare these figures with a default run."""
    defaults = load_config(
        TrainConfig, None, [f"data.url={cfg.data.url}", f"model.method={method}"]
    )
    base, ours = _flatten(to_dict(defaults)), _flatten(to_dict(cfg))
    return {
        key: value
        for key, value in ours.items()
        if base.get(key) != value and key not in _PER_ROW_OR_PATH and key != "optim.batch_size"
    }


def _settings_text(settings: dict) -> str:
    return " ".join(f"{key}={value}" for key, value in settings.items()) or "none"


def _row(m: dict, workers: int, nodes: int | None, global_batch: int) -> dict:
    """One table row from a run's last metrics window. The all-reduce time of a step is
    what the step waited on its collective (allreduce, plus the straggler wait when
    run.barrier_timing splits it out); its share is of the step's wall time (rows of a
    step over rows/s: compute, monitor, reads and all)."""
    steps = max(1, m["window_steps"])
    step_ms = 1000 * (m["rows"] / steps) / max(m["rows_per_s_total"], 1e-9)
    allreduce_ms = m["allreduce_ms_per_step"] + m.get("wait_ms_per_step", 0.0)
    return {
        "nodes": nodes,  # None: the plain local Ray (one node, the worker sweep)
        "workers": workers,
        "rows_per_s": m["rows_per_s_total"],
        "rows_per_s_worker": m["rows_per_s_worker"],
        "compute_ms_per_step": m["compute_ms_per_step"],
        "allreduce_ms_per_step": m["allreduce_ms_per_step"],
        "monitor_ms_per_step": m["monitor_ms_per_step"],
        "allreduce_bytes_per_step": m["allreduce_bytes_per_step"],
        "step_ms": step_ms,
        "allreduce_seconds": allreduce_ms * steps / 1000,  # over the last epoch's window
        "allreduce_share": allreduce_ms / step_ms,
        "per_node": m.get("per_node") or None,  # {node_id: {rows, seconds, workers}}
        "global_batch": global_batch,
        "steps_per_epoch": m["window_steps"],
    }


def _per_node_text(per_node: dict | None) -> str:
    if not per_node:
        return "-"
    return "/".join(str(v["rows"]) for _, v in sorted(per_node.items()))


NODES_NOTE = (
    "note: the N-node clusters run on this one host, so their nodes share its "
    f"{os.cpu_count()} cores: 'vs 1 node' measures multi-node overhead (separate raylets "
    "and object stores, a cross-node all-reduce), not a speed-up."
)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--batch", type=int, default=4096, help="rows per worker per step")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--method", default="clam", choices=["clam", "kmeans", "attention", "dcam"])
    p.add_argument(
        "--pretrain-epochs", type=int, default=1, help="dcam: autoencoder epochs before --epochs"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="any other training setting, e.g. --set data.read_threads=1 (repeatable)",
    )
    p.add_argument(
        "--ceiling",
        action="store_true",
        help="also run the bare step in 1 and in N processes at once (what the cores allow)",
    )
    p.add_argument(
        "--nodes",
        default="",
        metavar="LIST",
        help="also train with N workers on a local N-node Ray cluster, for each N (e.g. 1,2,3)",
    )
    p.add_argument("--json", default="bench_results/scaling.json")
    args = p.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    node_counts = [int(n) for n in args.nodes.split(",") if n.strip()]
    # A Ray of its own (never another cluster on the machine): the figures are ours alone.
    ray.init(address="local", num_cpus=max(workers), include_dashboard=False, log_to_driver=False)
    rows, node_rows, bare, ceiling, settings = [], [], None, None, None
    # Only DCAM reads it: set for another method it would be stated for nothing.
    dcam_only = [f"dcam.pretrain_epochs={args.pretrain_epochs}"] if args.method == "dcam" else []
    with tempfile.TemporaryDirectory() as tmp:
        data = f"{tmp}/data"
        write_mixture(data, args.n, args.d, args.k, 8.0, 0, max(1, args.n // 16))

        def config(w: int, name: str) -> TrainConfig:
            return load_config(
                TrainConfig,
                None,
                [
                    f"data.url={data}",
                    f"model.method={args.method}",
                    f"model.n_clusters={args.k}",
                    f"optim.batch_size={args.batch // w}",  # same GLOBAL batch for every worker count
                    f"optim.epochs={args.epochs}",
                    f"run.num_workers={w}",
                    f"run.storage_path={tmp}/runs",
                    f"run.name={name}",
                    f"run.checkpoint_every={args.epochs}",
                    "run.report_every=1000000",  # one metrics window per epoch
                    "run.verify_every=0",  # (checked at each epoch end only)
                    *dcam_only,
                    *args.set,
                ],
            )

        for w in workers:
            cfg = config(w, f"w{w}")
            if bare is None:  # at the 1-worker batch: the work of one worker alone
                bare = bare_step_of_run(cfg, args.n)
                settings = non_default_settings(cfg, args.method)
            if args.ceiling and w == workers[-1] and w > 1:
                ceiling = hardware_ceiling(cfg, args.n, w, args.batch // w)
            m = run_training(cfg).metrics  # the last epoch's window
            rows.append(_row(m, w, None, args.batch))
        if node_counts:
            # One Ray at a time on this machine: the plain one ends before the clusters.
            ray.shutdown()
        for n in node_counts:
            # N worker raylets of one CPU (the head has none): one training worker per node.
            with local_cluster(workers=n, cpus_per_worker=1, head_cpus=0) as cluster:
                cluster.connect()
                m = run_training(config(n, f"nodes{n}")).metrics
            # (its exit disconnected this process and shut every raylet down)
            node_rows.append(_row(m, n, n, args.batch))
    one = rows[0]["rows_per_s"]
    single = {r["workers"]: r["rows_per_s"] for r in rows}
    for r in rows + node_rows:
        r["vs_bare_step"] = r["rows_per_s"] / bare
        r["speedup_vs_first"] = r["rows_per_s"] / one
        # a cluster row over the plain single-node row with as many workers
        base = single.get(r["workers"]) if r["nodes"] is not None else None
        r["vs_single_node"] = r["rows_per_s"] / base if base else None
    print(
        f"n={args.n} d={args.d} k={args.k} method={args.method} global batch={args.batch} "
        f"(last epoch); bare step ({workers[0]} worker's batch, 1 thread): {bare:,.0f} rows/s"
    )
    print(f"settings not at the trainer's defaults: {_settings_text(settings)}")
    print(
        f"{'nodes':>7s} {'workers':>7s} {'rows/s':>10s} {'vs bare':>8s} {'speed-up':>9s} "
        f"{'vs 1 node':>9s} {'rows/s/worker':>16s} {'compute ms/step':>16s} "
        f"{'allreduce ms/step':>18s} {'allreduce s':>11s} {'share':>6s} "
        f"{'monitor ms/step':>16s} {'bytes/step':>11s} {'per-node rows':>16s}"
    )
    for r in rows + node_rows:
        per_worker = "/".join(f"{v:.0f}" for v in r["rows_per_s_worker"])
        nodes = "1 local" if r["nodes"] is None else str(r["nodes"])
        vs_one = "-" if r["vs_single_node"] is None else f"{r['vs_single_node']:.2f}x"
        print(
            f"{nodes:>7s} {r['workers']:7d} {r['rows_per_s']:10.0f} {r['vs_bare_step']:8.2f} "
            f"{r['speedup_vs_first']:8.2f}x {vs_one:>9s} {per_worker:>16s} "
            f"{r['compute_ms_per_step']:16.2f} {r['allreduce_ms_per_step']:18.2f} "
            f"{r['allreduce_seconds']:11.3f} {r['allreduce_share']:6.1%} "
            f"{r['monitor_ms_per_step']:16.2f} {r['allreduce_bytes_per_step']:11d} "
            f"{_per_node_text(r['per_node']):>16s}"
        )
    if node_rows:
        print(
            "nodes: '1 local' is the worker sweep on a plain local Ray; N is a local N-node "
            "cluster (head without CPUs + N one-CPU worker raylets, one training worker each)"
        )
        print(NODES_NOTE)
    if ceiling is not None:
        per = " + ".join(f"{v:,.0f}" for v in ceiling["processes"])
        print(
            f"hardware ceiling: the bare step alone in 1 process {ceiling['one_process']:,.0f} "
            f"rows/s; in {workers[-1]} processes at once {per} rows/s = "
            f"{ceiling['speedup']:.2f}x (no Ray, reader, monitor or all-reduce)"
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                # every setting not at the trainer's default (paths and per-row values aside)
                "non_default_settings": settings,
                "bare_step_rows_per_s": bare,
                "rows": rows,
                # --nodes: each N on a local N-node cluster (on this one host: see the note)
                "node_rows": node_rows,
                "nodes_note": NODES_NOTE if node_rows else None,
                "ceiling": ceiling,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
