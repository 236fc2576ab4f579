"""Micro-benchmark: GFLOP/s of a ClAM training epoch beside torch's own SGEMM, same run.

Model of the work: 12*n*k*d*T FLOP per epoch (per AM step: 2 GEMMs forward, 4 backward,
each 2*rows*k*d). The epoch is the masked ``clam_loss`` forward + backward + Adam step over
n rows in minibatches of ``--batch``. SGEMM is timed on the three GEMM shapes the step
actually multiplies ((r,d)x(d,k), (r,k)x(k,d), (k,r)x(r,d)), where r is the rows of each
block the step runs: the whole batch when batch x k fits one training block, else the
row blocks ``clam_loss`` cuts it into (derived from the same TRAIN_BLOCK_ELEMS, so at
--batch 8192 --k 4096 SGEMM runs sixteen 512-row blocks, as the step does, not one 8192-row
product); a 2048^3 SGEMM is printed for context. Per round SGEMM is the best of five short
timings.

The rounds interleave SGEMM, the AM epoch and (unless --no-baseline) the same epoch written
with plain autograd ops, so machine noise hits all alike; medians over --repeats rounds.
Two clocks: wall time and process CPU time. On a machine shared with other jobs the CPU
clock is the fairer one (time slices lost to other processes do not count); both ratios
are printed and written.

    python jobs/bench_am_step.py [--n 65536 --d 128 --k 256 --steps 10 --batch 8192
                                  --repeats 5 --threads 1 --json bench_results/am_step.json]

Which AM path runs follows from the batch: the direct step when batch x k fits one block
(clam_dist.models.am.TRAIN_BLOCK_ELEMS), otherwise the same direct steps on row blocks
that fit, each block's forward and backward run before the next (e.g. --batch 8192
--k 4096: 16 blocks of 512 rows); the table names it. The kernel floor is timed on one
block.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from clam_dist.models.am import TRAIN_BLOCK_ELEMS
from clam_dist.models.clam import clam_loss, draw_mask

BETA, ALPHA, MASK_RATIO = 0.05, 0.1, 0.2


def _clocks(fn: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def train_block_rows(k: int) -> int:
    """Rows of one training block at k prototypes: the rule clam_loss applies to
    TRAIN_BLOCK_ELEMS (models/clam.py), so SGEMM is timed on the shapes the step runs."""
    return max(1, TRAIN_BLOCK_ELEMS // max(1, k))


def step_block_rows(batch: int, k: int) -> list[int]:
    """Rows of each block one batch is trained in: the whole batch when it fits one
    block (the direct step), else full blocks and the remainder (the row-blocked loss)."""
    block = train_block_rows(k)
    if batch <= block:
        return [batch]
    return [min(block, batch - r0) for r0 in range(0, batch, block)]


def sgemm_round(blocks: list[int], d: int, k: int) -> tuple[float, float]:
    """Best GFLOP/s (wall, cpu) of the step's three GEMM shapes on each of its row blocks
    (one batch's worth), ~1.5 GFLOP per timing."""
    g = torch.Generator().manual_seed(1)
    r_t, r = torch.randn(d, k, generator=g), torch.randn(k, d, generator=g)
    # One set of operands per distinct block height (a remainder block differs).
    operands = {
        rows: (
            torch.randn(rows, d, generator=g),
            torch.randn(rows, k, generator=g),
            torch.randn(k, rows, generator=g),
        )
        for rows in set(blocks)
    }
    flops = sum(3 * 2 * rows * d * k for rows in blocks)
    inner = max(1, int(1.5e9 // flops))

    def work() -> None:
        for _ in range(inner):
            for rows in blocks:
                x, p, p_t = operands[rows]
                torch.mm(x, r_t)
                torch.mm(p, r)
                torch.mm(p_t, x)

    work()  # warm-up (thread pool, caches)
    # Best of five short timings: the reference is SGEMM at its best, which makes the
    # AM/SGEMM ratio conservative on a noisy machine.
    times = [_clocks(work) for _ in range(5)]
    wall, cpu = min(t[0] for t in times), min(t[1] for t in times)
    return flops * inner / wall / 1e9, flops * inner / cpu / 1e9


def square_sgemm(size: int = 2048) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    _, cpu = _clocks(lambda: [a @ b for _ in range(3)])
    return 3 * 2 * size**3 / cpu / 1e9


def _autograd_loss(x, protos, beta, alpha, steps, mask, fill) -> torch.Tensor:
    """The same masked loss written with plain ops and autograd (the baseline the fused
    step in clam_dist.models.am is measured against)."""
    state = x * (1 - mask) + fill * mask
    for _ in range(steps):
        logits = torch.matmul(state, protos.t()) * beta - 0.5 * beta * (protos * protos).sum(1)
        state = state + alpha * mask * (torch.softmax(logits, dim=1) @ protos - state)
    return (((state - x) * mask) ** 2).sum(dim=1).mean()


def kernel_floor(batch: int, d: int, k: int) -> dict:
    """The direct step's kernels timed alone, each on warm buffers (best of five): its six
    GEMMs, and the least elementwise work it must do around them on the (batch x k) block
    (bias add, softmax, the softmax-backward product, the bias gradient's column sum) and
    on the (batch x d) state (lerp, dY = w*grad, <dY, Y>, grad - dY). gemm / (gemm +
    elementwise) is what a step of separate torch kernels can reach even with every pass
    in cache: the ceiling of the AM / SGEMM ratio without fused kernels."""
    g = torch.Generator().manual_seed(3)
    x, r = torch.randn(batch, d, generator=g), torch.randn(k, d, generator=g)
    p, gl = torch.rand(batch, k, generator=g), torch.randn(batch, k, generator=g)
    y, gy, w = torch.randn(batch, d, generator=g), torch.randn(batch, d, generator=g), 0.1
    bias = torch.randn(k, generator=g)
    out_bk, out_bd = torch.empty(batch, k), torch.empty(batch, d)

    def best(fn: Callable[[], object], inner: int = 10) -> float:
        fn()
        return min(_clocks(lambda: [fn() for _ in range(inner)])[1] for _ in range(5)) / inner

    gemm = (
        2 * best(lambda: torch.mm(x, r.t(), out=out_bk))  # logits; dL/dP = dY R^T
        + 2 * best(lambda: torch.mm(p, r, out=out_bd))  # read-out P R; dlogits R
        + 2 * best(lambda: torch.mm(p.t(), x))  # P^T dY; dlogits^T x
    )
    elementwise = (
        2 * best(lambda: out_bk.copy_(bias.expand(batch, k)))  # bias / delta broadcast
        + best(lambda: torch.softmax(gl, 1))
        + best(lambda: out_bk.copy_(gl).mul_(p))
        - best(lambda: out_bk.copy_(gl))  # the product alone, not the refill
        + best(lambda: gl.sum(0))
        + best(lambda: torch.lerp(x, y, w))
        + best(lambda: gy * w)
        + best(lambda: (gy * y).sum(1))
        + best(lambda: torch.sub(gy, y))
    )
    return {
        "gemm_ms": gemm * 1e3,
        "elementwise_ms": elementwise * 1e3,
        "ceiling": gemm / (gemm + elementwise),
    }


def make_epoch(x: torch.Tensor, k: int, steps: int, batch: int, fused: bool) -> Callable[[], None]:
    n, d = x.shape
    g = torch.Generator().manual_seed(0)
    protos = torch.nn.Parameter(x[torch.randperm(n, generator=g)[:k]].clone())
    opt = torch.optim.Adam([protos], lr=1e-3)
    fill = x.mean(0)
    masks = [draw_mask(min(batch, n - b0), d, MASK_RATIO, False, g) for b0 in range(0, n, batch)]
    loss_fn = clam_loss if fused else _autograd_loss

    def epoch() -> None:
        for i, b0 in enumerate(range(0, n, batch)):
            loss = loss_fn(x[b0 : b0 + batch], protos, BETA, ALPHA, steps, mask=masks[i], fill=fill)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    epoch()  # warm-up
    return epoch


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
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--no-baseline", action="store_true", help="skip the plain-autograd epoch")
    p.add_argument("--json", default="bench_results/am_step.json")
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    x = torch.randn(args.n, args.d, generator=torch.Generator().manual_seed(2))
    flops = 12 * args.n * args.k * args.d * args.steps
    blocks = step_block_rows(min(args.batch, args.n), args.k)
    block_rows = blocks[0]
    path = "direct" if len(blocks) == 1 else f"direct in row blocks of {block_rows}"
    variants = {"fused": make_epoch(x, args.k, args.steps, args.batch, fused=True)}
    if not args.no_baseline:
        variants["autograd"] = make_epoch(x, args.k, args.steps, args.batch, fused=False)

    rounds = []
    for _ in range(args.repeats):
        row = dict(zip(("sgemm_wall", "sgemm_cpu"), sgemm_round(blocks, args.d, args.k)))
        for name, epoch in variants.items():
            wall, cpu = _clocks(epoch)
            row[f"{name}_wall"], row[f"{name}_cpu"] = flops / wall / 1e9, flops / cpu / 1e9
            row[f"{name}_epoch_s"] = wall
        rounds.append(row)
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    ratios = {
        f"{name}_{clock}_over_sgemm": median[f"{name}_{clock}"] / median[f"sgemm_{clock}"]
        for name in variants
        for clock in ("wall", "cpu")
    }
    square = square_sgemm()
    floor = kernel_floor(block_rows, args.d, args.k)

    print(
        f"n={args.n} d={args.d} k={args.k} T={args.steps} batch={args.batch} "
        f"threads={torch.get_num_threads()} repeats={args.repeats} AM path={path} "
        f"({flops / 1e9:.0f} GFLOP per epoch); SGEMM on {len(blocks)} block(s) of "
        f"{block_rows} x {args.d} x {args.k} per batch, as the step multiplies them"
    )
    print(
        f"{'GFLOP/s (median)':<28s} {'wall':>8s} {'cpu':>8s} {'wall/SGEMM':>11s} {'cpu/SGEMM':>10s}"
    )
    print(f"{'SGEMM, AM step shapes':<28s} {median['sgemm_wall']:8.1f} {median['sgemm_cpu']:8.1f}")
    for name in variants:
        label = "AM epoch, fused step" if name == "fused" else "AM epoch, plain autograd"
        print(
            f"{label:<28s} {median[f'{name}_wall']:8.1f} {median[f'{name}_cpu']:8.1f} "
            f"{ratios[f'{name}_wall_over_sgemm']:11.1%} {ratios[f'{name}_cpu_over_sgemm']:10.1%}"
        )
    print(f"{'SGEMM 2048^3 (context)':<28s} {'':>8s} {square:8.1f}")
    print(
        f"kernels alone, one direct step: GEMMs {floor['gemm_ms']:.2f} ms, least elementwise "
        f"{floor['elementwise_ms']:.2f} ms -> ceiling without fused kernels "
        f"{floor['ceiling']:.1%} of the GEMM rate"
    )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                "flop_per_epoch": flops,
                "am_path": path,
                # the rows of each block SGEMM was timed on (one batch): the step's shapes
                "sgemm_block_rows": blocks,
                "threads": torch.get_num_threads(),
                "rounds": rounds,
                "median": median,
                "ratios": ratios,
                "sgemm_square_2048_cpu_gflops": square,
                "kernel_floor": floor,
                "machine": platform.platform(),
                "torch": torch.__version__,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
