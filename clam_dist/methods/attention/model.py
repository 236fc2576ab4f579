"""Attention-based clustering's model and in-memory training: k heads whose vectors
mu_h are the clusters, trained on the reconstruction risk E||x - layer(x)||^2 (the
attention-clustering paper's objective). The scores and the read-out are the shared
attention math of ``clam_dist/models/attention.py``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clam_dist.methods.attention import DEFAULTS
from clam_dist.methods.attention.config import AttentionSection
from clam_dist.models.attention import Score, attention_output, check_beta, check_score
from clam_dist.train.in_process import InProcessTrainer, fit_config, memory_init
from clam_dist.train.memory_batches import row_chunk_for


class AttentionLayer(torch.nn.Module):
    """The simplified attention layer: k heads, head h carries the trainable vector mu_h.

    A plain nn.Module (prototypes are an ``nn.Parameter``): the distributed trainer calls
    ``attention_loss(layer, x)`` per worker and all-reduces grad mu itself.
    """

    def __init__(self, mu: torch.Tensor, beta: float, score: Score = "distance"):
        super().__init__()
        check_score(score)
        check_beta(beta)
        if mu.ndim != 2:
            raise ValueError(f"mu must be 2-D (k heads, d), got shape {tuple(mu.shape)}")
        self.mu = torch.nn.Parameter(mu.detach().clone().float())
        self.beta = float(beta)
        self.score: Score = score

    @property
    def k(self) -> int:
        return int(self.mu.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return attention_output(x, self.mu, self.beta, self.score)


def attention_loss(layer: torch.nn.Module, x_batch: torch.Tensor) -> torch.Tensor:
    """Reconstruction risk of a batch: mean_i ||x_i - layer(x_i)||^2.

    ``layer`` is an ``AttentionLayer`` (or any module with its forward).
    """
    return ((x_batch - layer(x_batch)) ** 2).sum(dim=1).mean()


# ---------------------------------------------------------------------------------------
# In-memory training loop (the distributed trainer calls ``attention_loss`` per worker).
# ---------------------------------------------------------------------------------------


@dataclass
class AttentionFitResult:
    mu: torch.Tensor  # (k, d): heads of the lowest-loss epoch
    beta: float
    loss_history: list[float]
    best_epoch: int
    snapshots: list[torch.Tensor]  # mu after initialisation and after every epoch


def attention_trainer(
    x: torch.Tensor,
    mu0: torch.Tensor,
    beta: float,
    score: Score,
    *,
    lr: float,
    batch_size: int,
    epochs: int,
    seed: int,
    plateau: tuple[float, int] | None = (0.8, 5),
) -> InProcessTrainer:
    """The reconstruction-risk epochs of a k-head layer in memory (fit_attention and the
    Tune trial): the distributed trainer's loop and ``AttentionObjective`` in this process
    (train/in_process.py). Adam on shuffled minibatches, reduce-on-plateau (None: a
    constant rate), the lowest-loss epoch's heads kept."""
    check_score(score)
    check_beta(beta)
    n, d = x.shape
    optim: dict = {"lr": lr, "epochs": epochs, "batch_size": batch_size}
    if plateau is None:
        optim["schedule"] = "constant"
    else:
        optim.update(schedule="plateau", plateau_factor=plateau[0], plateau_patience=plateau[1])
    cfg = fit_config(
        "attention",
        seed,
        {
            "model": {"n_clusters": int(mu0.shape[0]), "beta": float(beta)},
            "attention": {"similarity": score},
            "optim": optim,
        },
    )
    init = memory_init(mu0.detach().float().numpy(), beta, n)  # no mask: no fill
    return InProcessTrainer(cfg, x.detach().float().numpy(), init, row_chunk=row_chunk_for(n))


def seed_from(generator: torch.Generator | None) -> int:
    """A training seed drawn from ``generator`` (0 without one): the in-memory trainer's
    batch order is a function of its seed, as the distributed one's is."""
    if generator is None:
        return 0
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def fit_attention(
    x: torch.Tensor,
    mu0: torch.Tensor,
    beta: float,
    score: Score = AttentionSection.similarity,
    lr: float = DEFAULTS.lr,
    epochs: int = 30,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    keep_snapshots: bool = False,
    plateau: tuple[float, int] | None = (0.8, 5),
) -> AttentionFitResult:
    """Minimise E||x - layer(x)||^2 over shuffled minibatches with Adam and
    reduce-on-plateau (``plateau`` = (factor, patience), None for a constant rate).

    Returns the heads of the epoch with the lowest mean loss (an unsupervised choice).
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    trainer = attention_trainer(
        x, mu0, beta, score, lr=lr, batch_size=batch_size, epochs=epochs,
        seed=seed_from(generator), plateau=plateau,
    )  # fmt: skip
    snapshots = [mu0.detach().clone().float()] if keep_snapshots else []
    while not trainer.done():
        trainer.run_epoch()
        if keep_snapshots:
            snapshots.append(trainer.update.prototypes().clone())
    best, best_epoch = trainer.kept(mu0.detach().clone().float())
    return AttentionFitResult(best, float(beta), list(trainer.epoch_losses), best_epoch, snapshots)
