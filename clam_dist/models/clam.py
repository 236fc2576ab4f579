"""ClAM: the self-supervised pattern-completion loss and its building blocks.

Pure torch. The training loop lives in clam_dist/train/ (one loop, on Ray Train or in one
process); ClAM's objective (clam_dist/methods/clam/objective.py) and DCAM's latent
pattern completion call ``clam_loss``, so the math is written once.

Loss (DESIGN.md): per sample draw a mask m in {0,1}^d hiding a fraction p of the
coordinates, fill the hidden coordinates with a fill value, evolve ONLY the hidden
coordinates for T steps, and score ||m * (x_T - x)||^2 against the original x.
Backpropagation runs through all T steps into the prototypes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from clam_dist.models.am import (
    TRAIN_BLOCK_ELEMS,
    Metric,
    am_evolve,
    check_dynamics,
    check_metric,
)

FillValue = Literal["mean", "min", "max", "zero"]
FILL_VALUES: tuple[str, ...] = ("mean", "min", "max", "zero")


@dataclass(frozen=True)
class AMParams:
    """The AM dynamics' hyper-parameters. beta=None means "derive from the data"
    (``beta_from_data``) once the prototypes are initialised."""

    beta: float | None = None
    alpha: float = 0.1
    steps: int = 10
    metric: Metric = "euclidean"

    def __post_init__(self) -> None:
        check_metric(self.metric)
        check_dynamics(1.0 if self.beta is None else self.beta, self.alpha, self.steps)

    def with_beta(self, beta: float) -> AMParams:
        return AMParams(beta=float(beta), alpha=self.alpha, steps=self.steps, metric=self.metric)


@dataclass(frozen=True)
class MaskSpec:
    """How the pattern-completion task hides coordinates.

    ratio: fraction p of coordinates hidden per sample (0 disables masking: the paper's
        unmasked ablation, loss ||x_T - x||^2 with every coordinate evolving).
    fill: value written into hidden coordinates: per-feature mean/min/max of the data
        (statistics passed in, so a distributed run uses the global ones) or zero.
    shared_every: every this-many-th epoch one mask is shared by the whole batch
        (authors: 3); 0 never shares.
    """

    ratio: float = 0.2
    fill: FillValue = "mean"
    shared_every: int = 3

    def __post_init__(self) -> None:
        if not (0.0 <= self.ratio < 1.0):
            raise ValueError(f"mask ratio must be in [0, 1), got {self.ratio!r}")
        if self.fill not in FILL_VALUES:
            raise ValueError(f"fill must be one of {FILL_VALUES}, got {self.fill!r}")
        if self.shared_every < 0:
            raise ValueError(f"shared_every must be >= 0, got {self.shared_every!r}")

    def shared_for_epoch(self, epoch: int) -> bool:
        """Epochs are counted from 0; epochs 2, 5, 8, ... share a mask when shared_every=3."""
        return self.shared_every > 0 and (epoch + 1) % self.shared_every == 0


def hidden_count(d: int, ratio: float) -> int:
    """Number of coordinates hidden per sample: at least one whenever ratio > 0."""
    return 0 if ratio <= 0 else max(1, min(d - 1 if d > 1 else 1, round(ratio * d)))


def draw_mask(
    n: int,
    d: int,
    ratio: float,
    shared: bool,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A {0,1} mask of shape (n, d) with exactly hidden_count(d, ratio) ones per row.

    Exactly-h-per-row (rather than Bernoulli) keeps the loss scale constant across batches.
    With ``shared`` every row gets the same mask.
    """
    h = hidden_count(d, ratio)
    rows = 1 if shared else n
    scores = torch.rand((rows, d), generator=generator, device="cpu")
    mask = torch.zeros((rows, d), dtype=dtype)
    if h > 0:
        idx = scores.argsort(dim=1)[:, :h]
        mask.scatter_(1, idx, 1.0)
    mask = mask.to(device)
    return mask.expand(n, d) if shared else mask


def fill_vector(stats_mean, stats_min, stats_max, fill: FillValue, d: int) -> torch.Tensor:
    """The per-feature fill values as a (d,) tensor."""
    if fill == "zero":
        return torch.zeros(d)
    source = {"mean": stats_mean, "min": stats_min, "max": stats_max}[fill]
    if source is None:
        raise ValueError(f"fill={fill!r} needs the data's per-feature {fill}")
    vec = torch.as_tensor(source, dtype=torch.float32).reshape(-1)
    if vec.numel() != d:
        raise ValueError(f"fill vector has {vec.numel()} entries, data has {d} features")
    return vec


def clam_loss(
    x: torch.Tensor,
    prototypes: torch.Tensor,
    beta: float,
    alpha: float,
    steps: int,
    metric: Metric = "euclidean",
    mask: torch.Tensor | None = None,
    fill: torch.Tensor | None = None,
    block_elems: int = TRAIN_BLOCK_ELEMS,
) -> torch.Tensor:
    """Mean pattern-completion loss of a batch.

    With ``mask`` (1 = hidden): hidden coordinates are set to ``fill`` (a (d,) tensor),
    only they evolve, and the loss is mean_i ||m_i * (x_T,i - x_i)||^2.
    With ``mask=None``: the unmasked ablation, every coordinate evolves from x and the loss
    is mean_i ||x_T,i - x_i||^2.

    A batch whose (rows x k) scores exceed ``block_elems`` is, when gradients are wanted,
    trained in row blocks (``_RowBlockedLoss``), each block's T direct steps run forward and
    backward at once; without gradients it runs whole (``am_evolve`` picks its path).
    """
    check_metric(metric)
    check_dynamics(beta, alpha, steps)
    if mask is not None:  # the fill only enters where coordinates are hidden
        if fill is None:
            fill = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
        fill = fill.to(dtype=x.dtype, device=x.device)
    block_rows = max(1, block_elems // max(1, prototypes.shape[0]))
    wants_grad = torch.is_grad_enabled() and (x.requires_grad or prototypes.requires_grad)
    if wants_grad and x.shape[0] > block_rows and steps > 0:
        spec = (float(beta), float(alpha), int(steps), metric, fill)
        total = _RowBlockedLoss.apply(x, prototypes, mask, spec, block_rows)
    else:
        total = _loss_sum(x, prototypes, beta, alpha, steps, metric, mask, fill)
    return total / x.shape[0]


def _loss_sum(x, prototypes, beta, alpha, steps, metric, mask, fill) -> torch.Tensor:
    """The batch's summed (not mean) pattern-completion loss; see ``clam_loss``."""
    target = x if metric == "euclidean" else torch.nn.functional.normalize(x, dim=1)
    if mask is None:
        x_t = am_evolve(x, prototypes, beta, alpha, steps, metric)
        return ((x_t - target) ** 2).sum()
    x_start = x * (1 - mask) + fill * mask
    x_t = am_evolve(x_start, prototypes, beta, alpha, steps, metric, mask)
    return (((x_t - target) * mask) ** 2).sum()


class _RowBlockedLoss(torch.autograd.Function):
    """The summed loss of a batch too large for one direct block, with its gradients
    computed in the forward pass, one block of rows at a time.

    Why: rows are independent given the prototypes, so the batch gradient is exactly the
    sum of the row blocks' gradients. Running each block's forward AND backward before the
    next block starts keeps memory at one block's saved tensors (rows x k x T), like the
    chunked read-out, but every AM step costs the direct path's 6 GEMMs; the chunked
    read-out recomputes the logits in its backward (7 GEMMs per step, so at most 6/7 of
    the GEMM rate). The backward pass then only scales the stored gradients. Gradients
    are taken for x and the prototypes (the mask and fill are constants).
    """

    @staticmethod
    def forward(ctx, x, prototypes, mask, spec, block_rows: int):
        beta, alpha, steps, metric, fill = spec
        need_x, need_p = ctx.needs_input_grad[:2]
        grad_x = torch.zeros_like(x) if need_x else None
        grad_p = torch.zeros_like(prototypes) if need_p else None
        total = x.new_zeros(())
        for r0 in range(0, x.shape[0], block_rows):
            rows = slice(r0, r0 + block_rows)
            xb = x[rows].detach().requires_grad_(need_x)
            pb = prototypes.detach().requires_grad_(need_p)
            mb = None if mask is None else mask[rows]
            with torch.enable_grad():
                loss = _loss_sum(xb, pb, beta, alpha, steps, metric, mb, fill)
                wanted = [t for t in (xb, pb) if t.requires_grad]
                grads = torch.autograd.grad(loss, wanted)
            if need_x:
                grad_x[rows] = grads[0]
            if need_p:
                grad_p.add_(grads[-1])
            total += loss.detach()
        ctx.save_for_backward(grad_x, grad_p)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_x, grad_p = ctx.saved_tensors
        return (
            None if grad_x is None else grad_x * grad_total,
            None if grad_p is None else grad_p * grad_total,
            None,
            None,
            None,
        )


@torch.no_grad()
def beta_from_data(
    x: torch.Tensor, prototypes: torch.Tensor, metric: Metric = "euclidean", scale: float = 16.0
) -> float:
    """A default inverse temperature from the data's distance scale.

    beta = scale / g, where g is the median gap between a point's squared distance to its
    second-nearest and nearest prototype (the median nearest distance if all gaps are 0).
    The logits -beta/2 ||x - rho||^2 of a typical point's two best prototypes then differ
    by scale/2, whatever the dimension or units: a softmax that is neither uniform (beta
    too small) nor a hard argmin with vanishing gradients (beta too large). Standardised
    7-D and 1024-D data get comparable behaviour.
    """
    from clam_dist.models.am import nearest_prototypes

    d2, _ = nearest_prototypes(x, prototypes, metric, top=2)
    if d2.shape[1] >= 2:
        # Gap between the best and second-best prototype is the scale that decides
        # assignments; fall back to nearest distance where all gaps are zero.
        gap = (d2[:, 1] - d2[:, 0]).median().item()
        base = gap if gap > 0 else d2[:, 0].median().item()
    else:
        base = d2[:, 0].median().item()
    if not base > 0:
        base = 1.0
    return float(scale / base)
