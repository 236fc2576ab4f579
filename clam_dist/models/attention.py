"""Attention-based clustering (Maulen-Soto, Boyer, Marion, arXiv 2505.13112).

Pure torch, no Ray, no I/O. Two pieces:

(a) The scores of k heads whose parameters mu_h are the cluster vectors. For a token
    x attention over the heads returns sum_h softmax_h(s(x, mu_h)) mu_h, with scores
    s = beta x.mu_h ("dot") or -beta/2 ||x - mu_h||^2 ("distance"); the cluster of x is
    the head with the highest attention weight (``attention_assign``). The method that
    trains the heads lives in ``clam_dist/methods/attention/``.

(b) In-context quantization (``identity_attention``, ``quantize_context``): key, query and
    value are the identity, nothing is trained, and the points of one context are updated
    together X <- softmax(beta X X^T) X (or with distance scores, a blurring mean-shift).
    Points of one well-separated cluster collapse onto one representative.

Both reuse the AM core's chunked read-out ``am.attention_readout``: the distance form IS
one ClAM step with alpha = 1, and the read-out with metric "spherical" is exactly the
bias-free softmax(beta x R^T) @ R, i.e. the dot-score form (it does not normalise R; the
caller's "prepared prototypes" are used as given). So memory stays bounded in n and k
(chunked with an online log-sum-exp, recomputing scores in the backward pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from clam_dist.models.am import DEFAULT_BLOCK_ELEMS, attention_readout, nearest_prototypes

Score = Literal["dot", "distance"]
SCORES: tuple[str, ...] = ("dot", "distance")

# Above this many rows one context is refused: identity attention costs ~4 n^2 d flops
# per step (two GEMMs). Memory is bounded by chunking, so this is a time guard, stated
# with the numbers in the error. 65,536 rows x 64 dims x 10 steps ~ 1.1e13 flops.
DEFAULT_MAX_CONTEXT = 65_536


def check_score(score: str) -> None:
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")


def check_beta(beta: float) -> None:
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")


def _readout_metric(score: Score) -> str:
    # "euclidean" read-out = distance scores (bias -beta/2||mu||^2); "spherical" read-out
    # = no bias = dot scores. See the module docstring.
    check_score(score)
    return "euclidean" if score == "distance" else "spherical"


def attention_output(
    x: torch.Tensor,
    mu: torch.Tensor,
    beta: float,
    score: Score = "distance",
    block_elems: int = DEFAULT_BLOCK_ELEMS,
) -> torch.Tensor:
    """sum_h softmax_h(s(x, mu_h)) mu_h, shape (n, d); differentiable in x and mu."""
    return attention_readout(x, mu, beta, _readout_metric(score), block_elems)


def attention_logits(
    x: torch.Tensor, mu: torch.Tensor, beta: float, score: Score = "distance"
) -> torch.Tensor:
    """Scores s(x, mu_h) up to a per-row constant, shape (n, k). Not chunked: use for
    small n*k (soft assignments of a batch); assignment itself uses ``attention_assign``."""
    check_score(score)
    logits = beta * (x @ mu.t())
    if score == "distance":
        logits = logits - 0.5 * beta * (mu * mu).sum(dim=1)
    return logits


def attention_weights(
    x: torch.Tensor, mu: torch.Tensor, beta: float, score: Score = "distance"
) -> torch.Tensor:
    """Attention of each token over the heads, rows sum to 1, shape (n, k)."""
    return torch.softmax(attention_logits(x, mu, beta, score), dim=1)


@torch.no_grad()
def attention_assign(
    x: torch.Tensor,
    mu: torch.Tensor,
    beta: float,
    score: Score = "distance",
    block_elems: int = DEFAULT_BLOCK_ELEMS,
) -> torch.Tensor:
    """Label = head with the highest attention weight, shape (n,) int64.

    beta > 0 does not change the argmax but is validated so a bad model is caught. For
    distance scores the argmax is the nearest head (chunked nearest-prototype search);
    for dot scores it is argmax_h x.mu_h, computed in row chunks.
    """
    check_score(score)
    check_beta(beta)
    if x.shape[1] != mu.shape[1]:
        raise ValueError(f"x has {x.shape[1]} features but the heads have {mu.shape[1]}")
    if score == "distance":
        return nearest_prototypes(x, mu, "euclidean", 1, block_elems)[1][:, 0]
    n, k = x.shape[0], mu.shape[0]
    rows = max(1, block_elems // max(1, k))
    out = torch.empty(n, dtype=torch.long, device=x.device)
    for r0 in range(0, n, rows):
        out[r0 : r0 + rows] = torch.argmax(x[r0 : r0 + rows] @ mu.t(), dim=1)
    return out


# ---------------------------------------------------------------------------------------
# In-context quantization: identity attention over one context.
# ---------------------------------------------------------------------------------------


def check_context(n: int, d: int, max_context: int) -> None:
    """Refuse a context whose quadratic cost is out of bounds, with the numbers."""
    if n > max_context:
        raise ValueError(
            f"context of {n} rows x {d} dims is larger than max_context={max_context}: identity "
            f"attention costs ~4*n^2*d = {4.0 * n * n * d:.2e} flops per step (memory is chunked, "
            f"time is not); split it into contexts of <= {max_context} rows (e.g. smaller Ray "
            "Data batches) or raise max_context"
        )


def identity_attention(
    x: torch.Tensor,
    beta: float,
    steps: int,
    score: Score = "distance",
    max_context: int = DEFAULT_MAX_CONTEXT,
    block_elems: int = DEFAULT_BLOCK_ELEMS,
) -> torch.Tensor:
    """Iterate X <- softmax(beta S(X, X)) X ``steps`` times over one context (n, d).

    S = X X^T ("dot", the paper's form) or -1/2 squared distances ("distance": Gaussian
    blurring mean-shift). Every point is updated at once and the memories are the points
    themselves, so each row stays in the convex hull of the context. Memory O(n d +
    block_elems) through the chunked read-out.
    """
    check_score(score)
    check_beta(beta)
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if x.ndim != 2:
        raise ValueError(f"a context must be 2-D (n, d), got shape {tuple(x.shape)}")
    check_context(x.shape[0], x.shape[1], max_context)
    metric = _readout_metric(score)
    with torch.no_grad():
        for _ in range(steps):
            x = attention_readout(x, x, beta, metric, block_elems)
    return x


def default_context_beta(x: torch.Tensor, neighbours: int = 10, scale: float = 1.0) -> float:
    """Inverse temperature for identity attention from the context's own distance scale.

    beta = scale / q, q = median squared distance of a point to its ``neighbours``-th
    nearest neighbour (on a sample of at most 2048 rows). The Gaussian kernel
    exp(-beta/2 d^2) then still couples a point to its local neighbourhood (so a cluster
    collapses) while far clusters get weight exp(-scale/2 * D^2/q) ~ 0. scale=1 was the
    best of {0.5, 1, 2} on generated mixtures (2 selected outliers as extra groups). For
    dot scores on unit-norm rows x.y = 1 - ||x - y||^2/2, so the same beta applies.
    """
    n = x.shape[0]
    if n < 2:
        return 1.0
    sample = x[:: max(1, n // 2048)][:2048]
    m = min(neighbours, sample.shape[0] - 1)
    d2, _ = nearest_prototypes(sample, sample, "euclidean", top=m + 1)
    q = float(d2[:, m].median())
    return float(scale / q) if q > 0 else 1.0


@torch.no_grad()
def group_coincident(points: torch.Tensor, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy leader grouping: the first ungrouped row opens a group that takes every
    ungrouped row within Euclidean distance ``tol`` of it. Returns (group id per row in
    order of first appearance (n,), leader row index per group (g,)).

    One vectorised pass per group, so it is fast when the context has collapsed (few
    groups) and O(n^2 d) in the worst case (nothing collapsed).
    """
    n = points.shape[0]
    groups = torch.full((n,), -1, dtype=torch.long)
    leaders: list[int] = []
    remaining = torch.arange(n)
    tol2 = float(tol) ** 2
    while remaining.numel() > 0:
        lead = int(remaining[0])
        d2 = ((points[remaining] - points[lead]) ** 2).sum(dim=1)
        take = d2 <= tol2
        take[0] = True
        groups[remaining[take]] = len(leaders)
        leaders.append(lead)
        remaining = remaining[~take]
    return groups, torch.tensor(leaders, dtype=torch.long)


@dataclass
class QuantizeResult:
    groups: torch.Tensor  # (n,) int64 group id, 0..g-1 in order of first appearance
    representatives: torch.Tensor  # (g, d) mean of the evolved points of each group
    leaders: torch.Tensor  # (g,) int64 row index of each group's first row
    evolved: torch.Tensor  # (n, d) the points after ``steps`` identity-attention updates
    beta: float
    tol: float

    @property
    def n_groups(self) -> int:
        return int(self.representatives.shape[0])


def quantize_context(
    x: torch.Tensor,
    beta: float | None = None,
    steps: int = 30,
    score: Score = "distance",
    tol: float | None = None,
    rel_tol: float = 1e-2,
    max_context: int = DEFAULT_MAX_CONTEXT,
) -> QuantizeResult:
    """In-context quantization of one context: evolve with identity attention, then rows
    that coincide within ``tol`` form one group.

    beta=None derives it from the context (``default_context_beta``). tol=None uses
    ``rel_tol`` times the context's RMS spread sqrt(mean ||x - mean(x)||^2), so the
    tolerance follows the data's units.
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(
            f"a context must be a non-empty 2-D (n, d) array, got shape {tuple(x.shape)}"
        )
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x).all(dim=1)).nonzero().flatten()
        raise ValueError(
            f"{bad.numel()} context rows contain NaN/inf (first rows: {bad[:5].tolist()})"
        )
    check_context(x.shape[0], x.shape[1], max_context)
    x = x.float()
    if beta is None:
        beta = default_context_beta(x)
    if tol is None:
        if not rel_tol > 0:
            raise ValueError(f"rel_tol must be > 0, got {rel_tol!r}")
        spread = float(((x - x.mean(0)) ** 2).sum(1).mean().sqrt())
        tol = rel_tol * spread if spread > 0 else rel_tol
    elif not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    evolved = identity_attention(x, beta, steps, score, max_context)
    groups, leaders = group_coincident(evolved, tol)
    g = leaders.numel()
    sums = torch.zeros((g, x.shape[1]), dtype=evolved.dtype).index_add_(0, groups, evolved)
    counts = torch.bincount(groups, minlength=g).to(evolved.dtype)
    return QuantizeResult(groups, sums / counts[:, None], leaders, evolved, float(beta), float(tol))
