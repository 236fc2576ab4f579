"""Labelling rows with a trained model, in memory: our predictor's (rows x k) chunk size
against faiss and scikit-learn on the same rows and prototypes, same run.

    python jobs/bench_predictor.py [--n 65536 --d 128 --ks 256,1024,4096 --threads 2
                                    --blocks 24,20 --steps 5 --repeats 2
                                    --json bench_results/predictor.json]

Rows: n x d standard normal float32; prototypes: k x d standard normal. Every method gets
``--threads`` threads (torch.set_num_threads, faiss.omp_set_num_threads, threadpoolctl
for scikit-learn). Per k:
- ours, nearest rule, chunks of 2^b (rows x k) entries for each b in ``--blocks``, with
  the energy output (what every trainer-made artifact adds for drift) and without;
- ours, AM rule (ClAM) with ``--steps`` steps, same chunk sizes, energy output;
- faiss ``IndexFlatL2.search(x, 1)`` and scikit-learn
  ``pairwise_distances_argmin_min`` (nearest prototype and its distance).
Best of ``--repeats`` timings each. The nearest-rule labels are checked equal to
faiss's (up to exact ties) so the table compares the same work.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import clam_dist.models.predictor as predictor_module
from clam_dist.models.predictor import ClusterPredictor


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: thread pools, first allocations
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def ours(x, protos, rule, steps, block_bits, outputs, repeats) -> tuple[float, np.ndarray]:
    pred = ClusterPredictor(
        rule, torch.from_numpy(protos), x.shape[1], 1.0, 0.5, steps, "euclidean"
    )
    before = predictor_module.BLOCK_ELEMS
    predictor_module.BLOCK_ELEMS = 1 << block_bits
    try:
        seconds = best_seconds(lambda: pred.predict(x, outputs), repeats)
        labels = pred.predict(x, outputs)["cluster"]
    finally:
        predictor_module.BLOCK_ELEMS = before
    return seconds, labels


def bench_k(x: np.ndarray, protos: np.ndarray, args) -> list[tuple[str, float]]:
    """(method, best seconds) for one set of prototypes: the peers, then ours."""
    import faiss
    from sklearn.metrics import pairwise_distances_argmin_min
    from threadpoolctl import threadpool_limits

    index = faiss.IndexFlatL2(args.d)
    index.add(protos)
    faiss_s = best_seconds(lambda: index.search(x, 1), args.repeats)
    faiss_labels = index.search(x, 1)[1][:, 0]
    with threadpool_limits(args.threads):
        sk_s = best_seconds(lambda: pairwise_distances_argmin_min(x, protos), args.repeats)
    found = [("faiss IndexFlatL2.search", faiss_s), ("scikit-learn argmin_min", sk_s)]
    for bits in (int(b) for b in args.blocks.split(",")):
        for name, rule, steps, outputs in (
            ("ours nearest", "nearest", 0, ()),
            ("ours nearest +energy", "nearest", 0, ("energy",)),
            (f"ours ClAM T={args.steps} +energy", "am", args.steps, ("energy",)),
        ):
            s, labels = ours(x, protos, rule, steps, bits, outputs, args.repeats)
            if rule == "nearest":
                agree = float((labels == faiss_labels).mean())
                if agree < 0.999:
                    raise SystemExit(
                        f"k={len(protos)}: labels agree with faiss on {agree:.4f} only"
                    )
            found.append((f"{name}, chunks 2^{bits}", s))
    return found


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=65_536)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--ks", default="256,1024,4096")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--blocks", default="24,20", help="log2 of (rows x k) entries per chunk")
    p.add_argument("--steps", type=int, default=5, help="AM steps of the ClAM rows")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", default="bench_results/predictor.json")
    args = p.parse_args()

    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.d), dtype=np.float32)
    rows = []
    for k in (int(v) for v in args.ks.split(",")):
        protos = rng.standard_normal((k, args.d), dtype=np.float32)
        found = bench_k(x, protos, args)
        faiss_s = found[0][1]
        for name, s in found:
            rows.append(
                {
                    "k": k,
                    "method": name,
                    "seconds": s,
                    "rows_per_s": args.n / s,
                    "vs_faiss": faiss_s / s,
                }
            )

    print(f"n={args.n} d={args.d} threads={args.threads}, best of {args.repeats}")
    print("| k | method | rows/s | / faiss |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['k']:,} | {r['method']} | {r['rows_per_s']:,.0f} | {r['vs_faiss']:.2f} |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
