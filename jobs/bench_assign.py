"""Assignment throughput: the Ray Data pipeline (local Parquet -> local Parquet, and local
S3 -> local S3) vs the in-memory predictor on the same rows, in the same run.

    python jobs/bench_assign.py [--n 1000000 --d 64 --k 64 --concurrency 2 --repeats 3]

Ray gets ``--concurrency`` CPUs. The in-memory predictor runs in this process with
torch limited to the same number of threads, and computes the same outputs the pipeline
writes by default (cluster, distance and the default optional outputs, energy and
margin, plus energy for the drift check when the model has its threshold), so the ratio
compares like with like: the same columns from the same rows. The
input and model are written once per store; then ``--repeats`` rounds each time the
in-memory predictor, the local job and the S3 job, one after the other (this machine is
shared and its speed drifts between seconds): the ratio compares each side's best round
(noise only slows a run down), and the median ratio of the rounds is printed beside it.
For each pipeline run it prints and saves the per-stage seconds (checks, read+compute+
write as Ray Data runs them, drift, commit) and, for the best round, Ray Data's stats.

--batch-size 0 uses the pipeline's auto_batch_size(d, k); --batch-sizes 1024,8192,65536
also times the in-memory predictor at those batch sizes (the basis of that default).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch

from clam_dist import ClAM
from clam_dist.artifacts import save_artifact
from clam_dist.assign.pipeline import (
    BASE_COLUMNS,
    AssignConfig,
    auto_batch_size,
    run_assignment,
)
from clam_dist.data.local_s3 import local_s3
from clam_dist.data.writer import write_vectors
from clam_dist.datasets.synthetic import make_gaussian_mixture
from clam_dist.models.predictor import ClusterPredictor
from clam_dist.sections import OutputsSection


def _write_inputs(url, write_opts, x, model, rows_per_file: int) -> None:
    write_vectors(url("in"), x, rows_per_file=rows_per_file, storage_options=write_opts)
    save_artifact(model.to_artifact(), url("model"), write_opts)


def _config(url, write_opts, args, batch) -> AssignConfig:
    """The job's config: the pipeline's defaults but for paths, batch and concurrency."""
    return AssignConfig(
        input=url("in"),
        output=url("out"),
        model=url("model"),
        id_column="id",
        storage_options=write_opts,
        batch_size=batch,
        concurrency=args.concurrency,
        overwrite=True,
    )


def computed_outputs(artifact_meta: dict) -> list[str]:
    """The optional outputs the pipeline's workers compute by default (the rule of
    assign/pipeline.py: the default outputs, plus energy for the drift check when the
    model carries its energy_p99 threshold); cluster and distance always come too.
    Each pipeline run's manifest is checked against this (``_check_columns``)."""
    drift = ["energy"] if artifact_meta.get("energy_p99") is not None else []
    return list(dict.fromkeys([*OutputsSection().outputs, *drift]))


def _check_columns(manifest: dict, outputs: list[str]) -> None:
    """Stop if the pipeline wrote other columns than the in-memory reference computes:
    the ratio would then compare unlike work. (The id is copied from the input.)"""
    expected = [*BASE_COLUMNS, *outputs]
    if manifest.get("columns") != expected:
        raise SystemExit(
            f"the pipeline wrote {manifest.get('columns')}, the in-memory reference computes "
            f"{expected}: fix computed_outputs before comparing them"
        )


def _pipeline(url, write_opts, args, batch, outputs: list[str]) -> dict:
    """Assign the rows under ``url`` (replacing an earlier round's output), return the
    measured row."""
    res = run_assignment(_config(url, write_opts, args, batch))
    _check_columns(res.manifest, outputs)
    return {
        "outputs": outputs,  # what the workers computed (beside cluster and distance)
        "rows_per_s": res.rows_per_second,
        "seconds": res.seconds,
        "timings_s": res.timings_s,
        "plan": res.plan,
        "ray_data_stats": res.stats,
    }


def task_split(input_url: str, model_url: str, outputs: list[str], batch: int) -> dict:
    """Where a fused task's time goes (Ray Data reports only the fused total): the same
    read, assignment and Parquet write of every row, one after the other in this
    process, one torch thread (what each task gets)."""
    import io

    import pyarrow.parquet as pq

    from clam_dist.assign.worker import assign_batch
    from clam_dist.data.ray_dataset import _read_units, read_plan
    from clam_dist.data.source import VectorSource

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    source = VectorSource(input_url, id_column="id")
    plan = read_plan(source)
    settings = {"model_url": model_url, "storage_options": None, "outputs": outputs}
    settings.update(passthrough=[], chunk_rows=batch)
    seconds = {"read": 0.0, "compute": 0.0, "write": 0.0}
    try:
        for task in range(len(plan)):
            t0 = time.perf_counter()
            parts = list(_read_units({"task": np.array([task])}, source, plan, 65_536, None))
            block = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
            t1 = time.perf_counter()
            table = assign_batch(block, **settings)
            t2 = time.perf_counter()
            pq.write_table(table, io.BytesIO())
            t3 = time.perf_counter()
            seconds["read"] += t1 - t0
            seconds["compute"] += t2 - t1
            seconds["write"] += t3 - t2
    finally:
        torch.set_num_threads(threads)
    return {k: round(v, 3) for k, v in seconds.items()}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--rows-per-file", type=int, default=100_000)
    p.add_argument("--concurrency", type=int, default=2, help="Ray CPUs = torch threads")
    p.add_argument("--batch-size", type=int, default=0, help="0 = auto_batch_size(d, k)")
    p.add_argument("--batch-sizes", default="", help="also time the predictor at these sizes")
    p.add_argument("--repeats", type=int, default=3, help="rounds of all three timings")
    p.add_argument("--json", default="bench_results/assign.json")
    args = p.parse_args()
    batch = args.batch_size or auto_batch_size(args.d, args.k)
    x, _, _ = make_gaussian_mixture(args.n, args.d, args.k, seed=0)
    model = ClAM(n_clusters=args.k, epochs=2, batch_size=1024, random_state=0).fit(x[:50_000])
    torch.set_num_threads(args.concurrency)  # the pipeline's CPU count, for a fair ratio
    artifact = model.to_artifact()
    predictor = ClusterPredictor.from_artifact(artifact)
    # The same columns on both sides: what the pipeline's workers compute by default.
    outputs = computed_outputs(artifact.meta)

    def time_predictor(rows_per_call: int) -> float:
        t0 = time.perf_counter()
        for r0 in range(0, args.n, rows_per_call):
            predictor.predict(x[r0 : r0 + rows_per_call], outputs)
        return time.perf_counter() - t0

    # A Ray of its own (never another cluster on the machine): the figures are ours alone.
    ray.init(
        address="local", num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False
    )
    local_name, s3_name = "local Parquet -> local Parquet", "local S3 -> local S3"
    rounds: dict[str, list[dict]] = {local_name: [], s3_name: []}
    mem_rounds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench_assign_") as tmp, local_s3(bucket="bench") as s3:

        def local(name: str) -> str:
            return str(Path(tmp) / name)

        # One untimed assignment of a small slice first: Ray's worker processes start and
        # import torch and the model once per cluster, not once per job (reported apart).
        _write_inputs(lambda name: local(f"warm/{name}"), None, x[:20_000], model, 10_000)
        warm = _pipeline(lambda name: local(f"warm/{name}"), None, args, batch, outputs)
        _write_inputs(local, None, x, model, args.rows_per_file)
        _write_inputs(s3.url, s3.storage_options, x, model, args.rows_per_file)
        for _ in range(args.repeats):
            mem_rounds.append(time_predictor(batch))
            rounds[local_name].append(_pipeline(local, None, args, batch, outputs))
            rounds[s3_name].append(_pipeline(s3.url, s3.storage_options, args, batch, outputs))
        split = task_split(local("in"), local("model"), outputs, batch)

    mem_s = min(mem_rounds)
    mem_rate = args.n / mem_s
    sweep = {int(b): args.n / time_predictor(int(b)) for b in args.batch_sizes.split(",") if b}
    runs: dict[str, dict] = {}
    for name, tries in rounds.items():
        best = dict(min(tries, key=lambda r: r["seconds"]))
        best["ratio_to_in_memory"] = best["rows_per_s"] / mem_rate
        best["seconds_by_round"] = [r["seconds"] for r in tries]
        best["timings_s_by_round"] = [r["timings_s"] for r in tries]
        # the same round's predictor and pipeline, ratio per round, then the median
        best["median_round_ratio"] = float(
            np.median([m / r["seconds"] for m, r in zip(mem_rounds, tries)])
        )
        runs[name] = best

    print(
        f"n={args.n} d={args.d} k={args.k} T={model.steps} CPUs={args.concurrency} "
        f"torch threads (in-memory)={torch.get_num_threads()} batch={batch}"
    )
    print(f"outputs on both sides: cluster, distance, {', '.join(outputs)}")
    print(
        f"best of {args.repeats} rounds each; 'median' = median over rounds of (that "
        "round's in-memory seconds / its pipeline seconds)"
    )
    print(
        f"{'path':34s} {'rows/s':>10s} {'seconds':>8s} {'ratio':>6s} {'median':>6s}  "
        "stages of the best round (s)"
    )
    for name, run in runs.items():
        stages = " ".join(f"{k}={v}" for k, v in run["timings_s"].items())
        print(
            f"{name:34s} {run['rows_per_s']:10.0f} {run['seconds']:8.1f} "
            f"{run['ratio_to_in_memory']:6.2f} {run['median_round_ratio']:6.2f}  {stages}"
        )
        print(f"{'':34s} seconds by round: {[round(t, 2) for t in run['seconds_by_round']]}")
    print(f"{'in-memory predictor (1 process)':34s} {mem_rate:10.0f} {mem_s:8.1f} {1.0:6.2f}")
    print(f"{'':34s} seconds by round: {[round(t, 2) for t in mem_rounds]}")
    total = sum(split.values())
    print(
        "  one task's time, split (the same read, assignment and write of all rows in this "
        "process, 1 torch thread): "
        + ", ".join(f"{k} {v:.2f} s ({100 * v / total:.0f}%)" for k, v in split.items())
    )
    print(
        f"  cold start (untimed warm-up: 20,000 rows on fresh Ray workers, before the runs "
        f"above): {warm['seconds']:.1f} s"
    )
    for b, rate in sweep.items():
        print(f"  in-memory predictor, {b:6d} rows per call: {rate:10.0f} rows/s")
    for name, run in runs.items():
        print(f"\n--- {name}: plan {json.dumps(run['plan'])}\n{run['ray_data_stats']}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    row = {
        "args": vars(args),
        "rows": args.n,
        "batch_size": batch,
        "steps": model.steps,
        "in_memory_rows_per_s": mem_rate,
        "in_memory_seconds": mem_s,
        "in_memory_seconds_by_round": mem_rounds,
        "in_memory_torch_threads": torch.get_num_threads(),
        # the optional outputs both sides computed (cluster and distance always)
        "outputs": outputs,
        "in_memory_rows_per_s_by_batch_size": sweep,
        "warm_up_seconds_20000_rows": warm["seconds"],
        "task_split_seconds_one_thread": split,
        "runs": runs,
    }
    out.write_text(json.dumps(row, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    np.random.seed(0)
    main()
