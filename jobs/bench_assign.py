"""Assignment throughput: the Ray Data pipeline reading from the local S3 server vs the
in-memory predictor on the same rows, in the same run.

    python jobs/bench_assign.py [--n 1000000 --d 64 --k 64 --concurrency 2 --batch-size 8192]
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
from clam_dist.assign.pipeline import AssignConfig, run_assignment
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
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--json", default="bench_results/assign.json")
    args = p.parse_args()
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
            batch_size=args.batch_size,
            concurrency=args.concurrency,
        )
        res = run_assignment(cfg)
    predictor = ClusterPredictor.from_artifact(model.to_artifact())
    t0 = time.perf_counter()
    for r0 in range(0, args.n, args.batch_size):
        predictor.predict(x[r0 : r0 + args.batch_size])
    mem_s = time.perf_counter() - t0
    row = {
        "rows": args.n,
        "pipeline_rows_per_s": res.rows_per_second,
        "pipeline_seconds": res.seconds,
        "in_memory_rows_per_s": args.n / mem_s,
        "in_memory_seconds": mem_s,
        "ratio_pipeline_over_in_memory": res.rows_per_second / (args.n / mem_s),
        "concurrency": args.concurrency,
    }
    print(
        f"n={args.n} d={args.d} k={args.k} T=10 actors={args.concurrency} batch={args.batch_size}"
    )
    print(f"{'path':36s} {'rows/s':>10s} {'seconds':>8s}")
    print(
        f"{'Ray Data pipeline (local S3 -> S3)':36s} {row['pipeline_rows_per_s']:10.0f} {res.seconds:8.1f}"
    )
    print(
        f"{'in-memory predictor (1 process)':36s} {row['in_memory_rows_per_s']:10.0f} {mem_s:8.1f}"
    )
    print(f"ratio pipeline / in-memory: {row['ratio_pipeline_over_in_memory']:.2f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), **row}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    np.random.seed(0)
    main()
