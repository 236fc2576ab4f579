"""Assignment throughput: the Ray Data pipeline reading from the local S3 server vs the
in-memory predictor on the same rows, in the same run.

    python jobs/bench_assign.py [--n 1000000 --d 64 --k 64 --concurrency 2 --batch-size 0]

--batch-size 0 uses the pipeline's auto_batch_size(d, k); --batch-sizes 1024,8192,65536
also times the in-memory predictor at those batch sizes (the basis of that default).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import ray

from clam_dist import ClAM
from clam_dist.artifacts import save_artifact
from clam_dist.assign.pipeline import AssignConfig, auto_batch_size, run_assignment
from clam_dist.data.local_s3 import local_s3
from clam_dist.data.writer import write_vectors
from clam_dist.datasets.synthetic import make_gaussian_mixture
from clam_dist.models.predictor import ClusterPredictor


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--rows-per-file", type=int, default=100_000)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=0, help="0 = auto_batch_size(d, k)")
    p.add_argument("--batch-sizes", default="", help="also time the predictor at these sizes")
    p.add_argument("--json", default="bench_results/assign.json")
    args = p.parse_args()
    batch = args.batch_size or auto_batch_size(args.d, args.k)
    x, _, _ = make_gaussian_mixture(args.n, args.d, args.k, seed=0)
    model = ClAM(n_clusters=args.k, epochs=2, batch_size=1024, random_state=0).fit(x[:50_000])
    ray.init(num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False)
    with local_s3(bucket="bench") as s3:
        opts = s3.storage_options
        write_vectors(s3.url("in"), x, rows_per_file=args.rows_per_file, storage_options=opts)
        save_artifact(model.to_artifact(), s3.url("model"), opts)
        cfg = AssignConfig(
            input=s3.url("in"),
            output=s3.url("out"),
            model=s3.url("model"),
            id_column="id",
            storage_options=opts,
            batch_size=batch,
            concurrency=args.concurrency,
        )
        res = run_assignment(cfg)
    predictor = ClusterPredictor.from_artifact(model.to_artifact())

    def time_predictor(rows_per_call: int) -> float:
        t0 = time.perf_counter()
        for r0 in range(0, args.n, rows_per_call):
            predictor.predict(x[r0 : r0 + rows_per_call])
        return time.perf_counter() - t0

    mem_s = time_predictor(batch)
    sweep = {int(b): args.n / time_predictor(int(b)) for b in args.batch_sizes.split(",") if b}
    row = {
        "rows": args.n,
        "pipeline_rows_per_s": res.rows_per_second,
        "pipeline_seconds": res.seconds,
        "in_memory_rows_per_s": args.n / mem_s,
        "in_memory_seconds": mem_s,
        "ratio_pipeline_over_in_memory": res.rows_per_second / (args.n / mem_s),
        "concurrency": args.concurrency,
        "batch_size": batch,
        "in_memory_rows_per_s_by_batch_size": sweep,
    }
    print(f"n={args.n} d={args.d} k={args.k} T=10 actors={args.concurrency} batch={batch}")
    print(f"{'path':36s} {'rows/s':>10s} {'seconds':>8s}")
    print(
        f"{'Ray Data pipeline (local S3 -> S3)':36s} {row['pipeline_rows_per_s']:10.0f} {res.seconds:8.1f}"
    )
    print(
        f"{'in-memory predictor (1 process)':36s} {row['in_memory_rows_per_s']:10.0f} {mem_s:8.1f}"
    )
    print(f"ratio pipeline / in-memory: {row['ratio_pipeline_over_in_memory']:.2f}")
    for b, rate in sweep.items():
        print(f"  in-memory predictor, {b:6d} rows per call: {rate:10.0f} rows/s")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), **row}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    np.random.seed(0)
    main()
