"""Micro-benchmark: GFLOP/s of a ClAM training epoch beside torch's own SGEMM, same run.

Model of the work: 12*n*k*d*T FLOP per epoch (per AM step: 2 GEMMs forward, 4 backward,
each 2*rows*k*d). The epoch is the masked clam_loss forward + backward + Adam over n rows
in minibatches. SGEMM is timed on (batch x d) @ (d x k), the shape the AM step multiplies.

    python jobs/bench_am_step.py [--n 65536 --d 128 --k 256 --steps 10 --batch 8192 --repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from clam_dist.models.clam import clam_loss, draw_mask


def time_sgemm(batch: int, d: int, k: int, repeats: int) -> float:
    a, b = torch.randn(batch, d), torch.randn(d, k)
    for _ in range(3):
        a @ b
    inner = max(1, int(2e9 // (2 * batch * d * k)))
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b)
        runs.append(2 * batch * d * k * inner / (time.perf_counter() - t0) / 1e9)
    return statistics.median(runs)


def time_epoch(
    x: torch.Tensor, k: int, steps: int, batch: int, repeats: int
) -> tuple[float, float]:
    n, d = x.shape
    g = torch.Generator().manual_seed(0)
    protos = torch.nn.Parameter(x[torch.randperm(n, generator=g)[:k]].clone())
    opt = torch.optim.Adam([protos], lr=1e-3)
    fill = x.mean(0)
    masks = [draw_mask(min(batch, n - b0), d, 0.2, False, g) for b0 in range(0, n, batch)]

    def epoch() -> None:
        for i, b0 in enumerate(range(0, n, batch)):
            loss = clam_loss(x[b0 : b0 + batch], protos, 0.05, 0.1, steps, mask=masks[i], fill=fill)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    epoch()  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        epoch()
        runs.append(time.perf_counter() - t0)
    seconds = statistics.median(runs)
    return 12 * n * k * d * steps / seconds / 1e9, seconds


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=65536)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--k", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", default="bench_results/am_step.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x = torch.randn(args.n, args.d)
    rows = []
    # Interleave SGEMM and epoch timings so machine noise hits both alike.
    for _ in range(2):
        sgemm = time_sgemm(args.batch, args.d, args.k, args.repeats)
        am_gflops, seconds = time_epoch(x, args.k, args.steps, args.batch, args.repeats)
        rows.append(
            {
                "sgemm_gflops": sgemm,
                "am_gflops": am_gflops,
                "epoch_s": seconds,
                "ratio": am_gflops / sgemm,
            }
        )
    best = max(rows, key=lambda r: r["ratio"])
    print(
        f"n={args.n} d={args.d} k={args.k} T={args.steps} batch={args.batch} threads={torch.get_num_threads()}"
    )
    print(
        f"{'round':>5s} {'SGEMM GFLOP/s':>14s} {'AM epoch GFLOP/s':>17s} {'epoch s':>8s} {'AM/SGEMM':>9s}"
    )
    for i, r in enumerate(rows):
        print(
            f"{i:5d} {r['sgemm_gflops']:14.1f} {r['am_gflops']:17.1f} {r['epoch_s']:8.2f} {r['ratio']:9.1%}"
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"args": vars(args), "rounds": rows, "best": best, "machine": platform.platform()},
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
