"""Benchmark: a scheduled pipeline over a synthetic stream of daily partitions.

    python jobs/bench_schedule.py                      # 10 days x 200,000 rows, d 32, k 64
    python jobs/bench_schedule.py --rows 20000 --days 8  # a quick look

Day 4 moves 3 components, day 7 adds 2, every other day is the same mixture
(clam_dist/datasets/drifting.py). Each day runs `run-partition`'s work
(clam_dist/registry/partition.py) into a fresh registry, with one local Ray for the
assignments. Figures (issue 27):

1. drift flags exactly the days that changed (no refresh on stable days);
2. warm refresh reaches the from-scratch model's loss in at most 1/3 of its steps: on
   each refresh day, the refresh's warm training (the champion's prototypes plus the new
   ones, the refresh's lr) against the from-scratch training of the first version
   (k-means++ refined by Lloyd, the config's lr; k = the warm start's k), the same
   objective (the champion's beta), same rows (the partition's sample + the reservoir) and epochs; both scored
   at the start and after every epoch by ClAM's loss on the partition's held-out rows
   with fixed masks; steps = optimizer steps until the warm model's loss is at or below
   the from-scratch model's final one (granularity: one epoch);
3. rows of unchanged components keep their cluster id across every refresh (the refresh
   day's rows labelled by the parent and by the challenger) and the new components' rows
   get ids the parent did not have (the table's "day-1 id" column: the share of rows of
   unchanged components on the id their component had on day 1, by majority);
4. re-running every day, in reverse order, gives identical assignments (file checksums)
   and says so.

Prints a table and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clam_dist.assign.commit import read_assignments  # noqa: E402
from clam_dist.config import load_config  # noqa: E402
from clam_dist.data.writer import write_vectors  # noqa: E402
from clam_dist.datasets.drifting import DriftingStream, day_key  # noqa: E402
from clam_dist.registry.config import PartitionConfig  # noqa: E402
from clam_dist.registry.partition import PartitionRequest, PartitionRun  # noqa: E402


def checksums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.parquet"))
    }


def labels_of(url: str) -> dict[int, int]:
    t = read_assignments(url, columns=["id", "cluster"])
    return dict(zip(t.column("id").to_pylist(), t.column("cluster").to_pylist()))


def _curve(config, z, method, prototypes, beta, seed, evaluate) -> list[tuple[int, float]]:
    """(global step, held-out loss) at the start and after every epoch of the trainer's
    loop in process, from ``prototypes``."""
    from clam_dist.methods.base_hooks import trainer_config
    from clam_dist.train.in_process import InProcessTrainer, memory_init
    from clam_dist.train.memory_batches import row_chunk_for

    cfg = trainer_config(config, method, len(prototypes), beta, seed)
    init = memory_init(prototypes, beta, len(z))
    trainer = InProcessTrainer(cfg, z, init, row_chunk=row_chunk_for(len(z)))
    points = [(0, evaluate(np.asarray(prototypes), beta))]
    while not trainer.done():
        metrics = trainer.run_epoch()
        protos = trainer.update.prototypes().detach().numpy()
        points.append((int(metrics["step"]), evaluate(protos, beta)))
    return points


def scratch_steps(run: PartitionRun, summary: dict) -> dict:
    """Figure 2 for one refresh: the refresh's warm training against the from-scratch
    training (the first version's start, seeding.trainer_start, at the config's lr)
    on the same rows and epochs with the same objective (the champion's beta), both
    scored after every epoch by ClAM's masked pattern-completion loss on the same held-out
    rows of the partition with the same fixed masks."""
    import torch

    from clam_dist.models.clam import clam_loss, draw_mask
    from clam_dist.models.seeding import trainer_start
    from clam_dist.registry.partition import seed_for
    from clam_dist.registry.refresh import fine_tuning, standardised, warm_start
    from clam_dist.registry.reservoir import earlier_keys, read_samples

    registry, config = run.registry, run.config
    parent = summary["recorded"]["champion_before"]
    champion = registry.load(parent)
    if champion.method != "clam":
        return {"partition": run.key, "note": "figure 2 is measured for ClAM"}
    seed = seed_for(config.seed, run.key, parent)
    x_train, x_hold = run._sample(seed)
    keys = earlier_keys(registry.store, run.key, config.refresh.reservoir_partitions)
    reservoir = read_samples(registry.store, keys, champion.n_features)
    z = standardised(champion, np.vstack([x_train, reservoir]))
    z_hold = torch.from_numpy(standardised(champion, x_hold))
    mask = draw_mask(len(z_hold), z_hold.shape[1], config.model.mask_ratio, False,
                     torch.Generator().manual_seed(12345))  # fmt: skip
    m = config.model

    def evaluate(prototypes: np.ndarray, beta: float) -> float:
        with torch.no_grad():
            loss = clam_loss(z_hold, torch.from_numpy(prototypes), beta, m.alpha, m.steps,
                             m.metric, mask=mask)  # fmt: skip
        return float(loss)

    start, _ = warm_start(config, champion, x_train, seed)
    t0 = time.perf_counter()
    warm = _curve(fine_tuning(config, seed), z, "clam", start, champion.beta, seed, evaluate)
    warm_s = time.perf_counter() - t0
    x = torch.from_numpy(z)
    scratch0 = trainer_start(x, len(start), m.init, m.metric, torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    # One objective for both (the champion's beta: the loss's temperature), two starts.
    cold = _curve(config, z, "clam", scratch0.numpy(), champion.beta, seed, evaluate)
    cold_s = time.perf_counter() - t0
    target = cold[-1][1]
    reached = next((s for s, v in warm if v <= target), None)
    return {
        "partition": run.key,
        "training_rows": int(len(z)),
        "k_start": int(len(start)),
        "scratch_curve": cold,
        "warm_curve": warm,
        "scratch_steps": cold[-1][0],
        "scratch_final_loss": target,
        "scratch_seconds": round(cold_s, 2),
        "warm_seconds": round(warm_s, 2),
        "warm_final_loss": warm[-1][1],
        "warm_steps_to_scratch_loss": reached,
        "ratio": None if reached is None else reached / max(1, cold[-1][0]),
    }


def ids_across(run: PartitionRun, summary: dict, comp: dict, stream: DriftingStream) -> dict:
    """Figure 3 at one refresh: the refresh day's rows labelled by the parent (its
    committed assignments, made before the refresh) and by the challenger: the share of
    rows of unchanged components whose id is the same, and the share of the new
    components' rows on ids the parent did not have."""
    from clam_dist.registry.partition import assignments_url

    parent = summary["recorded"]["champion_before"]
    old = labels_of(assignments_url(run.registry, run.key, parent))
    new = labels_of(assignments_url(run.registry, run.key, summary["challenger_version"]))
    unchanged = [r for r in new if stream.moved <= comp[r] < stream.k]
    added = [r for r in new if comp[r] >= stream.k]
    parent_ids = set(run.registry.card(parent)["cluster_ids"])
    return {
        "unchanged_rows_keep_id": float(np.mean([old[r] == new[r] for r in unchanged])),
        "new_component_rows_on_new_ids": (
            float(np.mean([new[r] not in parent_ids for r in added])) if added else None
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--days", type=int, default=10)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--d", type=int, default=32)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--method", default="clam", choices=["clam", "kmeans", "attention"])
    p.add_argument("--work", default="bench_results/schedule", help="data and registry here")
    p.add_argument("--json", default="bench_results/bench_schedule.json")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--stream-seed", type=int, default=0, help="the synthetic stream's seed")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()

    import shutil

    import ray

    stream = DriftingStream(d=args.d, k=args.k, rows=args.rows, seed=args.stream_seed)
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    truth = {}
    for day in range(1, args.days + 1):
        x, labels, ids = stream.partition(day)
        write_vectors(f"{work}/data/dt={day_key(day)}", x, ids=ids, rows_per_file=50_000)
        truth[day] = dict(zip(ids.tolist(), labels.tolist()))
    config = load_config(
        PartitionConfig,
        None,
        [f"model.method={args.method}", f"model.n_clusters={args.k}", "data.id_column=id",
         *args.overrides],
    )  # fmt: skip
    changed_days = {stream.move_day, stream.new_day}
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, configure_logging=False,
             log_to_driver=False)  # fmt: skip
    rows, refreshes, lines = [], [], []
    day1_ids: dict[int, int] = {}
    ids_before_new: set[int] = set()
    t_all = time.perf_counter()
    try:
        for day in range(1, args.days + 1):
            request = PartitionRequest(str(work / "registry"), "events", day_key(day),
                                       f"{work}/data/dt={{partition}}")  # fmt: skip
            run = PartitionRun(config, request, say=lines.append)
            t0 = time.perf_counter()
            s = run.run()
            seconds = time.perf_counter() - t0
            labels = labels_of(s["assignments"])
            comp = truth[day]
            if day == 1:
                votes: dict[int, list[int]] = {}
                for rid, cid in labels.items():
                    votes.setdefault(comp[rid], []).append(cid)
                day1_ids = {c: int(np.bincount(v).argmax()) for c, v in votes.items()}
            unchanged = [r for r in labels if comp[r] < stream.k and comp[r] >= stream.moved]
            kept = float(np.mean([labels[r] == day1_ids[comp[r]] for r in unchanged]))
            new_rows = [labels[r] for r in labels if comp[r] >= stream.k]
            if day < stream.new_day:
                ids_before_new |= set(labels.values())
            new_ok = (
                float(np.mean([c not in ids_before_new for c in new_rows])) if new_rows else None
            )
            row = {
                "day": day, "partition": day_key(day), "changed": day in changed_days,
                "drift_share": s["drift_share"], "refreshed": s["refreshed"],
                "promoted": s["promoted"], "model_version": s["model_version"],
                "k": len(set(labels.values())), "unchanged_rows_on_day1_ids": kept,
                "new_component_rows_on_new_ids": new_ok, "seconds": round(seconds, 2),
                "gate": s.get("gate"),
            }  # fmt: skip
            rows.append(row)
            if s["refreshed"]:
                refresh = scratch_steps(run, s)
                refresh.update(ids_across(run, s, comp, stream))
                refreshes.append(refresh)
        forward = checksums(work / "registry" / "events" / "assignments")
        reruns = []
        for day in range(args.days, 0, -1):
            request = PartitionRequest(str(work / "registry"), "events", day_key(day),
                                       f"{work}/data/dt={{partition}}")  # fmt: skip
            s = PartitionRun(config, request, say=lines.append).run()
            reruns.append(s["rerun"] and not s["refreshed"] and not s["promoted"])
        backward = checksums(work / "registry" / "events" / "assignments")
    finally:
        ray.shutdown()

    flagged = {r["day"] for r in rows if r["refreshed"]}
    drift_exact = flagged == changed_days
    ratios = [r["ratio"] for r in refreshes]
    warm_ok = bool(ratios) and all(r is not None and r <= 1 / 3 for r in ratios)
    keep_min = min((r["unchanged_rows_keep_id"] for r in refreshes), default=None)
    new_share = [
        r["new_component_rows_on_new_ids"]
        for r in refreshes
        if r["new_component_rows_on_new_ids"] is not None
    ]
    identical = forward == backward and all(reruns)
    figures = {
        "drift_flags_exactly_changed_days": drift_exact,
        "refreshed_days": sorted(flagged),
        "changed_days": sorted(changed_days),
        "warm_steps_to_scratch_loss_ratio": ratios,
        "warm_within_one_third": warm_ok,
        "unchanged_rows_keep_id_min": keep_min,
        "unchanged_keep_at_least_98pct": keep_min is not None and keep_min >= 0.98,
        "new_component_rows_on_new_ids_min": min(new_share) if new_share else None,
        "reverse_rerun_identical": identical,
        "assignment_files": len(forward),
        "total_seconds": round(time.perf_counter() - t_all, 1),
    }
    print(f"{'day':>4} {'changed':>7} {'drift':>7} {'refresh':>7} {'promote':>7} {'model':>5} "
          f"{'k':>4} {'day-1 id':>8} {'new ids':>8} {'s':>6}")  # fmt: skip
    for r in rows:
        new = (
            "-"
            if r["new_component_rows_on_new_ids"] is None
            else f"{r['new_component_rows_on_new_ids']:.3f}"
        )
        drift = "-" if r["drift_share"] is None else f"{r['drift_share']:.3f}"
        print(f"{r['day']:>4} {str(r['changed']):>7} {drift:>7} {str(r['refreshed']):>7} "
              f"{str(r['promoted']):>7} {r['model_version']:>5} {r['k']:>4} "
              f"{r['unchanged_rows_on_day1_ids']:>8.4f} {new:>8} {r['seconds']:>6}")  # fmt: skip
    for r in refreshes:
        print(f"refresh {r['partition']}: unchanged rows keep their id {r['unchanged_rows_keep_id']:.4f}, "
              f"new components' rows on new ids {r['new_component_rows_on_new_ids']}; warm reached the from-scratch loss {r['scratch_final_loss']:.4f} "
              f"at step {r['warm_steps_to_scratch_loss']} of the scratch run's {r['scratch_steps']} "
              f"(ratio {r['ratio']})")  # fmt: skip
    for key, value in figures.items():
        print(f"{key}: {value}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "figures": figures, "days": rows,
                               "refreshes": refreshes, "log": lines}, indent=2, default=str))  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
