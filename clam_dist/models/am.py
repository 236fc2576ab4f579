"""Associative-Memory (AM) dynamics: energy, steps, unrolled evolution, assignment.

Pure torch, no Ray, no I/O. Notation follows DESIGN.md: data x (n, d), prototypes R (k, d),
inverse temperature beta, step alpha, T steps.

Everything is written in GEMM form. For the Euclidean metric the softmax logits are

    -beta/2 ||x - rho||^2 = beta x.rho - beta/2 ||rho||^2 - beta/2 ||x||^2

and the last term is constant over prototypes, so it cancels inside the softmax: the AM
step is dot-product attention with query x, keys = values = R, scale beta and a per-key
bias -beta/2 ||rho||^2. For the spherical (cosine) metric x and rho are unit vectors and
the bias vanishes.

Memory is bounded in n AND k: when a (rows x k) block would be larger than
``block_elems`` the work is chunked over rows and over prototypes, with a streaming
(online) log-sum-exp, and the backward pass recomputes the scores chunk by chunk instead
of storing them (the flash-attention recipe, in plain torch). Small problems take the
direct path: one hand-written autograd function per AM step (``_DirectStep``) that stores
the (n, k) probabilities and keeps elementwise passes to a minimum, so a training step
runs at about 80% of the machine's SGEMM rate (jobs/bench_am_step.py; plain autograd
over the same ops reaches about 73%).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch

Metric = Literal["euclidean", "spherical"]
METRICS: tuple[str, ...] = ("euclidean", "spherical")

# Largest (rows x prototypes) block materialised at once: 2^24 floats = 64 MiB in float32.
DEFAULT_BLOCK_ELEMS = 1 << 24
# Block of a nearest-centre pass (k-means' assignment and Lloyd, the swaps' two nearest):
# 2^22 floats = 16 MiB. On 2 idle cores, 500k x 128 rows, one pass against faiss
# IndexFlatL2.search (same centres and threads): 2^22 ran at 1.16x faiss's speed at
# k = 256 and 1.00x at k = 1,024, where 2^24 ran at 0.95x / 0.78x (the block no longer
# stays in cache between the GEMM writing it and the min reading it); 2^20-2^21 within 3%
# of 2^22; the swaps' two-nearest pass at k = 4,096 on 262k rows 1.40 s against 1.90 s.
# On a machine busy with other work larger blocks won before (each block is a parallel
# region whose start-up and barrier cost grows with the load): 2^24 was used until then.
NEAREST_BLOCK_ELEMS = 1 << 22
# Largest (rows x prototypes) block of one TRAINING pass (clam_loss with gradients):
# 2^21 floats = 8 MiB, so the step's elementwise passes over its probabilities stay in
# cache. Measured (B = 8,192, d = 128, k = 4,096, T = 10, 1 thread): rows of 512 ran at
# ~48 GFLOP/s, rows of 4,096 (a 64 MiB block) at ~36-40.
TRAIN_BLOCK_ELEMS = 1 << 21


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def check_dynamics(beta: float, alpha: float, steps: int) -> None:
    """Validate AM hyper-parameters with messages that name the bad value."""
    if not (isinstance(beta, (int, float)) and beta > 0 and beta < float("inf")):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    if not (isinstance(alpha, (int, float)) and 0 < alpha <= 1):
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps (T) must be an integer >= 0, got {steps!r}")


def normalize_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Project rows onto the unit sphere (zero rows stay zero instead of becoming NaN)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def prepare_prototypes(prototypes: torch.Tensor, metric: Metric) -> torch.Tensor:
    """The prototypes the dynamics actually use: unit-norm for the spherical metric."""
    check_metric(metric)
    return normalize_rows(prototypes) if metric == "spherical" else prototypes


def _bias(prototypes: torch.Tensor, beta: float, metric: Metric) -> torch.Tensor | None:
    if metric == "spherical":
        return None
    return -0.5 * beta * (prototypes * prototypes).sum(dim=1)


def _logits(
    x: torch.Tensor, prototypes: torch.Tensor, beta: float, bias: torch.Tensor | None
) -> torch.Tensor:
    """Softmax logits up to a per-row constant: beta x R^T (+ bias)."""
    scores = torch.matmul(x, prototypes.t()) * beta
    return scores if bias is None else scores + bias


def squared_distances(x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """||x_i - rho_j||^2 as one GEMM, clamped at 0 against cancellation. Shape (n, k).

    The prototype norms ride in addmm's broadcast input and the row norms are added in
    place, so no separate (n, k) norm-sum tensor is built."""
    x_sq = (x * x).sum(dim=1, keepdim=True)
    p_sq = (prototypes * prototypes).sum(dim=1)
    d2 = torch.addmm(p_sq, x, prototypes.t(), alpha=-2.0)
    return d2.add_(x_sq).clamp_min_(0.0)


def set_matmul_precision() -> None:
    """THE place that sets torch's float32 matmul precision ("high": TF32 tensor cores on
    GPUs that have them, ~2-8x faster GEMMs with a 10-bit mantissa, which the AM softmax
    and k-means argmin tolerate). CPU GEMMs ignore it. Called where training
    (``fit_clam``, ``kmeans_fit``) starts; call it yourself before GPU inference."""
    torch.set_float32_matmul_precision("high")


def _block_sizes(n: int, k: int, block_elems: int) -> tuple[int, int]:
    """Row and prototype chunk sizes so that one block has at most block_elems entries."""
    k_chunk = min(k, max(1, block_elems // max(1, min(n, 1024))))
    row_chunk = max(1, min(n, block_elems // k_chunk))
    return row_chunk, k_chunk


# ---------------------------------------------------------------------------------------
# Attention read-out softmax(logits) @ R, chunked with an online log-sum-exp.
# ---------------------------------------------------------------------------------------


def _folded_keys(protos: torch.Tensor, beta: float, metric: Metric) -> torch.Tensor:
    """K = beta * [R, -||rho||^2 / 2] (Euclidean) or beta * R (spherical), shape (k, d[+1]).

    With queries q = [x, 1] the logits beta x.rho - beta/2 ||rho||^2 are ONE GEMM q K^T:
    scale and bias ride inside the product instead of two extra (rows x k) passes."""
    if metric == "spherical":
        return protos * beta
    col = (protos * protos).sum(dim=1, keepdim=True).mul_(-0.5)
    return torch.cat([protos, col], dim=1).mul_(beta)


def _folded_queries(x: torch.Tensor, metric: Metric) -> torch.Tensor:
    if metric == "spherical":
        return x
    return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)


def _readout_forward_chunked(
    x: torch.Tensor, protos: torch.Tensor, beta: float, metric: Metric, row_chunk: int, k_chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (softmax(logits) @ R, logsumexp(logits)) without an (n, k) tensor.

    Per (row, prototype) block: one GEMM for the logits, in-place subtract and exp, a row
    sum, and one GEMM accumulating into the read-out."""
    n, k = x.shape[0], protos.shape[0]
    out = torch.empty_like(x)
    lse = torch.empty(n, dtype=x.dtype, device=x.device)
    keys = _folded_keys(protos, beta, metric)
    q = _folded_queries(x, metric)
    for r0 in range(0, n, row_chunk):
        qr = q[r0 : r0 + row_chunk]
        run_max = torch.full((qr.shape[0], 1), -float("inf"), dtype=x.dtype, device=x.device)
        run_sum = torch.zeros((qr.shape[0], 1), dtype=x.dtype, device=x.device)
        acc = torch.zeros((qr.shape[0], x.shape[1]), dtype=x.dtype, device=x.device)
        for c0 in range(0, k, k_chunk):
            weights = torch.mm(qr, keys[c0 : c0 + k_chunk].t())
            new_max = torch.maximum(run_max, weights.amax(dim=1, keepdim=True))
            scale = torch.exp(run_max - new_max)
            weights.sub_(new_max).exp_()
            run_sum.mul_(scale).add_(weights.sum(dim=1, keepdim=True))
            acc.mul_(scale).addmm_(weights, protos[c0 : c0 + k_chunk])
            run_max = new_max
        out[r0 : r0 + row_chunk] = acc.div_(run_sum)
        lse[r0 : r0 + row_chunk] = (run_max + run_sum.log()).squeeze(1)
    return out, lse


class _ChunkedReadout(torch.autograd.Function):
    """softmax(beta x R^T + bias) @ R with O(rows x chunk) memory in both passes.

    The bias is folded into the product (``_folded_keys``): forward 2 GEMMs per block,
    backward 5 (the logits are recomputed, not stored: that recompute is what the
    O(rows x chunk) memory costs over the direct path's 4), and the keys' gradient and
    the bias' gradient come out of one GEMM against q = [x, 1]."""

    @staticmethod
    def forward(ctx, x, protos, beta: float, metric: str, row_chunk: int, k_chunk: int):
        out, lse = _readout_forward_chunked(x, protos, beta, metric, row_chunk, k_chunk)
        ctx.save_for_backward(x, protos, out, lse)
        ctx.cfg = (beta, metric, row_chunk, k_chunk)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, protos, out, lse = ctx.saved_tensors
        beta, metric, row_chunk, k_chunk = ctx.cfg
        n, k, d = x.shape[0], protos.shape[0], x.shape[1]
        need_x, need_p = ctx.needs_input_grad[:2]
        grad_x = torch.zeros_like(x) if need_x else None
        grad_p = torch.zeros_like(protos) if need_p else None
        keys = _folded_keys(protos, beta, metric)
        q = _folded_queries(x, metric)
        # D_i = <dO_i, O_i>: the softmax Jacobian's row correction.
        neg_delta = (grad_out * out).sum(dim=1, keepdim=True).neg_()
        for r0 in range(0, n, row_chunk):
            qr, go = q[r0 : r0 + row_chunk], grad_out[r0 : r0 + row_chunk]
            nd = neg_delta[r0 : r0 + row_chunk]
            lr = lse[r0 : r0 + row_chunk].unsqueeze(1)
            for c0 in range(0, k, k_chunk):
                pc, kc = protos[c0 : c0 + k_chunk], keys[c0 : c0 + k_chunk]
                probs = torch.mm(qr, kc.t()).sub_(lr).exp_()
                # dL/dlogits = P * (dY R^T - D)
                grad_logits = torch.addmm(nd, go, pc.t()).mul_(probs)
                if need_x:
                    grad_x[r0 : r0 + row_chunk].addmm_(grad_logits, pc, alpha=beta)
                if need_p:
                    # Keys and bias gradient in one GEMM against q = [x, 1]; with
                    # K = beta [R, -||R||^2/2]: dR = beta (dK[:, :d] - dK[:, d] R).
                    # Mapped onto R per block so no (k, d+1) buffer outlives the block.
                    g_keys = torch.mm(grad_logits.t(), qr)
                    g = grad_p[c0 : c0 + k_chunk].addmm_(probs.t(), go)
                    g.add_(g_keys[:, :d], alpha=beta)
                    if metric != "spherical":
                        g.sub_(g_keys[:, d:] * pc, alpha=beta)
        return grad_x, grad_p, None, None, None, None


def step_logits(
    x: torch.Tensor, protos: torch.Tensor, bias: torch.Tensor | None, beta: float
) -> torch.Tensor:
    """The direct step's logits beta x R^T + bias, the scale and bias inside one GEMM.
    Shared with the predictor, which must reproduce the step bit for bit."""
    if bias is None:
        return torch.mm(x, protos.t()).mul_(beta)
    return torch.addmm(bias, x, protos.t(), alpha=beta)


class _DirectStep(torch.autograd.Function):
    """One whole AM step x + w * (softmax(beta x R^T + bias) @ R - x) on a block small
    enough to hold its (n, k) probabilities; w is alpha or alpha * mask.

    Autograd over the plain ops makes about eight elementwise passes over the (n, k)
    block per step (scale, bias, softmax and their backwards) and four over (n, d).
    Written by hand: the scale and bias ride inside the GEMMs (addmm's alpha and input),
    the state update is one fused ``lerp``, the softmax-backward row correction is the
    cheap (n, d) product <dY, Y> instead of an (n, k) reduction, and the four backward
    GEMMs accumulate straight into the gradients. Saved for backward: x, the
    probabilities P, the read-out Y = P R, R and w.
    """

    @staticmethod
    def forward(ctx, x, protos, bias, beta: float, weight):
        logits = step_logits(x, protos, bias, beta)
        probs = torch.softmax(logits, dim=1)
        del logits
        readout = probs @ protos
        ctx.save_for_backward(
            x, protos, probs, readout, weight if torch.is_tensor(weight) else None
        )
        ctx.beta, ctx.weight, ctx.has_bias = beta, weight, bias is not None
        return torch.lerp(x, readout, weight)

    @staticmethod
    def backward(ctx, grad):
        x, protos, probs, readout, weight = ctx.saved_tensors
        if weight is None:
            weight = ctx.weight
        beta = ctx.beta
        need_x, need_p, need_b = ctx.needs_input_grad[:3]
        grad_y = grad * weight  # dL/dY: only hidden coordinates see the read-out
        # softmax backward: dL/dlogits = P * (dL/dP - <dL/dY, Y>) with dL/dP = dL/dY R^T.
        delta = (grad_y * readout).sum(dim=1, keepdim=True)
        grad_logits = torch.addmm(delta.neg_(), grad_y, protos.t()).mul_(probs)
        grad_x = grad_p = grad_b = None
        if need_x:
            # direct path (1 - w) dL/dx' plus the keys path beta dlogits R.
            grad_x = torch.sub(grad, grad_y).addmm_(grad_logits, protos, alpha=beta)
        if need_p:
            # values path P^T dY plus keys path beta dlogits^T x (the bias path comes
            # back through grad_b and the autograd graph of the bias).
            grad_p = torch.mm(probs.t(), grad_y).addmm_(grad_logits.t(), x, alpha=beta)
        if need_b and ctx.has_bias:
            grad_b = grad_logits.sum(dim=0)
        return grad_x, grad_p, grad_b, None, None


def attention_readout(
    x: torch.Tensor,
    prototypes: torch.Tensor,
    beta: float,
    metric: Metric = "euclidean",
    block_elems: int = DEFAULT_BLOCK_ELEMS,
) -> torch.Tensor:
    """softmax_mu(-beta/2 ||x - rho_mu||^2) @ R (or the cosine form), shape (n, d).

    ``prototypes`` must already be prepared (unit-norm for spherical).
    """
    n, k = x.shape[0], prototypes.shape[0]
    if n * k <= block_elems:
        logits = _logits(x, prototypes, beta, _bias(prototypes, beta, metric))
        return torch.softmax(logits, dim=1) @ prototypes
    row_chunk, k_chunk = _block_sizes(n, k, block_elems)
    return _ChunkedReadout.apply(x, prototypes, float(beta), metric, row_chunk, k_chunk)


# ---------------------------------------------------------------------------------------
# Dynamics
# ---------------------------------------------------------------------------------------


def am_step(
    x: torch.Tensor,
    prototypes: torch.Tensor,
    beta: float,
    alpha: float,
    metric: Metric = "euclidean",
    mask: torch.Tensor | None = None,
    block_elems: int = DEFAULT_BLOCK_ELEMS,
) -> torch.Tensor:
    """One AM step x <- x + alpha * m * (softmax(...) @ R - x).

    ``mask`` (same shape as x, 1 = hidden coordinate) restricts the update to hidden
    coordinates; None updates every coordinate. For the spherical metric the state is
    projected back onto the unit sphere after the step.
    """
    return _step(x, prepare_prototypes(prototypes, metric), beta, alpha, metric, mask, block_elems)


def _step(
    x, protos, beta, alpha, metric, mask, block_elems, bias=None, weight=None
) -> torch.Tensor:
    """One step with already-prepared prototypes (shared by am_step and am_evolve).

    ``bias`` (``_bias(protos, beta, metric)``) and ``weight`` (alpha * mask) may be passed
    in so that T steps compute them once. Blocks that fit in ``block_elems`` take the
    fused single-step function; larger ones the chunked read-out.
    """
    if metric == "spherical" and mask is not None:
        return _spherical_masked_step(x, protos, beta, alpha, mask, block_elems)
    if x.shape[0] * protos.shape[0] <= block_elems:
        if bias is None:
            bias = _bias(protos, beta, metric)
        if weight is None:
            weight = float(alpha) if mask is None else mask.to(x.dtype) * float(alpha)
        x_next = _DirectStep.apply(x, protos, bias, float(beta), weight)
    else:
        update = attention_readout(x, protos, beta, metric, block_elems) - x
        if mask is not None:
            update = update * mask
        x_next = x + alpha * update
    return normalize_rows(x_next) if metric == "spherical" else x_next


def _spherical_masked_step(x, protos, beta, alpha, mask, block_elems) -> torch.Tensor:
    """Masked step for the spherical metric: scores from the unit vector x / ||x|| (the
    cosine geometry), but the state itself is not renormalised, because renormalising
    the row would move the visible coordinates, which pattern completion keeps as given.
    Visible coordinates come back bit for bit (lerp with weight 0)."""
    x_hat = normalize_rows(x)
    if x.shape[0] * protos.shape[0] <= block_elems:
        readout = _DirectStep.apply(x_hat, protos, None, float(beta), 1.0)
    else:
        readout = attention_readout(x_hat, protos, beta, "spherical", block_elems)
    return torch.lerp(x, readout, mask.to(x.dtype) * float(alpha))


def am_evolve(
    x: torch.Tensor,
    prototypes: torch.Tensor,
    beta: float,
    alpha: float,
    steps: int,
    metric: Metric = "euclidean",
    mask: torch.Tensor | None = None,
    block_elems: int = DEFAULT_BLOCK_ELEMS,
) -> torch.Tensor:
    """T unrolled AM steps; differentiable w.r.t. x and the prototypes through every step."""
    protos = prepare_prototypes(prototypes, metric)
    if metric == "spherical":
        x = normalize_rows(x)
    # Per-evolution constants of the direct path (the chunked path derives its own).
    direct = x.shape[0] * protos.shape[0] <= block_elems
    bias = _bias(protos, beta, metric) if direct and steps > 0 else None
    weight = None
    if direct and steps > 0:
        weight = float(alpha) if mask is None else mask.to(x.dtype) * float(alpha)
    for _ in range(steps):
        x = _step(x, protos, beta, alpha, metric, mask, block_elems, bias, weight)
    return x


def energy(
    x: torch.Tensor,
    prototypes: torch.Tensor,
    beta: float,
    metric: Metric = "euclidean",
    block_elems: int = DEFAULT_BLOCK_ELEMS,
) -> torch.Tensor:
    """E(x) = -(1/beta) log sum_mu exp(-beta/2 ||x - rho_mu||^2), shape (n,).

    For the spherical metric x and rho are unit-normalised first, so the distance is
    ||x^ - rho^||^2 = 2 - 2 cos. Streaming log-sum-exp over prototype chunks.
    """
    check_metric(metric)
    protos = prepare_prototypes(prototypes, metric)
    if metric == "spherical":
        x = normalize_rows(x)
    n, k = x.shape[0], protos.shape[0]
    row_chunk, k_chunk = _block_sizes(n, k, block_elems)
    parts = []
    for r0 in range(0, n, row_chunk):
        xr = x[r0 : r0 + row_chunk]
        chunks = [
            torch.logsumexp(-0.5 * beta * squared_distances(xr, protos[c0 : c0 + k_chunk]), dim=1)
            for c0 in range(0, k, k_chunk)
        ]
        lse = torch.logsumexp(torch.stack(chunks, dim=1), dim=1) if len(chunks) > 1 else chunks[0]
        parts.append(-lse / beta)
    return torch.cat(parts) if parts else x.new_zeros(0)


@torch.no_grad()
def nearest_prototypes(
    x: torch.Tensor,
    prototypes: torch.Tensor,
    metric: Metric = "euclidean",
    top: int = 1,
    block_elems: int = DEFAULT_BLOCK_ELEMS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``top`` smallest squared distances and their prototype indices, each (n, top).

    Chunked over rows and prototypes with a running top-k, so memory is bounded in k.
    """
    check_metric(metric)
    protos = prepare_prototypes(prototypes, metric)
    if metric == "spherical":
        x = normalize_rows(x)
    n, k = x.shape[0], protos.shape[0]
    top = min(top, k)
    row_chunk, k_chunk = _block_sizes(n, k, block_elems)
    best_d = torch.empty((n, top), dtype=x.dtype, device=x.device)
    best_i = torch.empty((n, top), dtype=torch.long, device=x.device)
    for r0 in range(0, n, row_chunk):
        xr = x[r0 : r0 + row_chunk]
        cur_d = cur_i = None
        for c0 in range(0, k, k_chunk):
            d2 = squared_distances(xr, protos[c0 : c0 + k_chunk])
            if top == 1:
                # min, not topk(1): one fused reduction instead of a selection.
                vals, idx = d2.min(dim=1, keepdim=True)
                idx = idx + c0
                if cur_d is None:
                    cur_d, cur_i = vals, idx
                else:
                    better = vals < cur_d
                    cur_d = torch.where(better, vals, cur_d)
                    cur_i = torch.where(better, idx, cur_i)
                continue
            t = min(top, d2.shape[1])
            vals, idx = torch.topk(d2, t, dim=1, largest=False)
            idx = idx + c0
            if cur_d is None:
                cur_d, cur_i = vals, idx
            else:
                both_d, both_i = torch.cat([cur_d, vals], 1), torch.cat([cur_i, idx], 1)
                keep_d, pos = torch.topk(both_d, min(top, both_d.shape[1]), dim=1, largest=False)
                cur_d, cur_i = keep_d, torch.gather(both_i, 1, pos)
        best_d[r0 : r0 + row_chunk] = cur_d
        best_i[r0 : r0 + row_chunk] = cur_i
    return best_d, best_i


def offset_score_blocks(
    x: torch.Tensor, prototypes: torch.Tensor, block_elems: int = 1 << 22
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, block) of ||rho||^2 - 2 x.rho for row blocks of at most ``block_elems``
    entries: the squared distances less ||x||^2, which is constant over prototypes, so
    it changes no argmin and is added to the n per-row results only, never to the n*k
    block. One addmm per block (the -2 rides in alpha, the prototype norms in the
    broadcast input) into ONE reused buffer: a block is valid until the next is yielded.
    k-means' ``assign_nearest`` and ``nearest_and_energy`` both read these blocks, so
    they take the same argmin."""
    n, k = x.shape[0], prototypes.shape[0]
    p_sq = torch.einsum("ij,ij->i", prototypes, prototypes)
    pt = prototypes.t()
    rows = max(1, min(n, block_elems // max(k, 1)))
    buf = torch.empty((min(rows, n), k), dtype=x.dtype, device=x.device)
    for r0 in range(0, n, rows):
        xr = x[r0 : r0 + rows]
        block = buf[: xr.shape[0]]
        torch.addmm(p_sq, xr, pt, alpha=-2.0, out=block)
        yield r0, block


@torch.no_grad()
def nearest_and_energy(
    x: torch.Tensor,
    prototypes: torch.Tensor,
    beta: float,
    metric: Metric = "euclidean",
    block_elems: int = 1 << 22,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(squared distance to the nearest prototype, its index, energy E(x)), each (n,),
    from ONE score GEMM per row block (``offset_score_blocks``): the trainer's monitor
    reads all three from the same scores instead of computing distances for
    ``nearest_prototypes`` and again for ``energy``, and k-means' update reuses the
    indices."""
    check_metric(metric)
    protos = prepare_prototypes(prototypes, metric)
    if metric == "spherical":
        x = normalize_rows(x)
    n = x.shape[0]
    nearest = x.new_empty(n)
    idx = torch.empty(n, dtype=torch.long, device=x.device)
    lse = x.new_empty(n)
    for r0, block in offset_score_blocks(x, protos, block_elems):
        r1 = r0 + block.shape[0]
        torch.min(block, dim=1, out=(nearest[r0:r1], idx[r0:r1]))
        lse[r0:r1] = torch.logsumexp(block.mul_(-0.5 * beta), dim=1)
    x_sq = torch.einsum("ij,ij->i", x, x)
    # E = -(1/beta) log sum exp(-beta/2 (block + ||x||^2)) = -lse/beta + ||x||^2 / 2
    energies = x_sq.mul(0.5).sub_(lse / beta)
    # Clamp: cancellation in ||x||^2 - 2x.rho + ||rho||^2 can leave tiny negatives.
    return nearest.add_(x_sq).clamp_(min=0.0), idx, energies


@torch.no_grad()
def assign(
    x: torch.Tensor,
    prototypes: torch.Tensor,
    beta: float,
    alpha: float,
    steps: int,
    metric: Metric = "euclidean",
    block_elems: int = DEFAULT_BLOCK_ELEMS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ClAM assignment: evolve T steps from x, then label = argmin_mu ||x_T - rho_mu||^2.

    Returns (labels (n,), squared distance of the ORIGINAL x to the assigned prototype (n,)).
    Rows are processed in chunks so memory is bounded whatever n is.
    """
    check_dynamics(beta, alpha, steps)
    protos = prepare_prototypes(prototypes, metric)
    n, k = x.shape[0], protos.shape[0]
    row_chunk, _ = _block_sizes(n, k, block_elems)
    row_chunk = max(row_chunk, 1)
    labels = torch.empty(n, dtype=torch.long, device=x.device)
    dist = torch.empty(n, dtype=x.dtype, device=x.device)
    for r0 in range(0, n, row_chunk):
        xr = x[r0 : r0 + row_chunk]
        xt = am_evolve(xr, protos, beta, alpha, steps, metric, block_elems=block_elems)
        _, idx = nearest_prototypes(xt, protos, metric, 1, block_elems)
        lab = idx[:, 0]
        xr_m = normalize_rows(xr) if metric == "spherical" else xr
        labels[r0 : r0 + row_chunk] = lab
        dist[r0 : r0 + row_chunk] = ((xr_m - protos[lab]) ** 2).sum(dim=1)
    return labels, dist
