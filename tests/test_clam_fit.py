"""The in-memory ClAM training loop: loss math against a float64 reference, masked
dynamics, loss decrease, best-epoch bookkeeping, dead prototypes, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clam_dist.methods.clam.fit import ClAMConfig, fit_clam
from clam_dist.models.am import am_evolve, assign
from clam_dist.models.clam import AMParams, MaskSpec, beta_from_data, clam_loss, draw_mask
from clam_dist.models.seeding import init_prototypes


def blobs(n=240, d=5, k=4, seed=0, scale=6.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=scale, size=(k, d))
    labels = rng.integers(0, k, n)
    return (centers[labels] + rng.normal(size=(n, d))).astype(np.float32), labels


def reference_masked_loss(x, R, beta, alpha, steps, mask, fill):
    """The DESIGN.md formula written out per point in float64, no GEMM tricks."""
    x, R, mask, fill = (np.asarray(a, dtype=np.float64) for a in (x, R, mask, fill))
    total = 0.0
    for i in range(x.shape[0]):
        v = x[i] * (1 - mask[i]) + fill * mask[i]
        for _ in range(steps):
            logits = -0.5 * beta * ((v[None, :] - R) ** 2).sum(1)
            p = np.exp(logits - logits.max())
            p /= p.sum()
            v = v + alpha * mask[i] * (p @ R - v)
        total += ((mask[i] * (v - x[i])) ** 2).sum()
    return total / x.shape[0]


def test_clam_loss_matches_float64_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 6, generator=g, dtype=torch.float64)
    R = torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = draw_mask(9, 6, 0.34, shared=False, generator=g, dtype=torch.float64)
    fill = x.mean(0)
    ours = clam_loss(x, R, 1.3, 0.2, 5, mask=mask, fill=fill)
    ref = reference_masked_loss(x, R, 1.3, 0.2, 5, mask, fill)
    assert ours.item() == pytest.approx(ref, rel=1e-10)
    assert (mask.sum(1) == 2).all()  # round(0.34 * 6) hidden per row


def test_masked_dynamics_leave_visible_coordinates_untouched():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 8, generator=g)
    R = torch.randn(5, 8, generator=g)
    mask = draw_mask(50, 8, 0.25, shared=False, generator=g)
    out = am_evolve(x, R, beta=2.0, alpha=0.1, steps=10, mask=mask)
    visible = mask == 0
    assert torch.equal(out[visible], x[visible])
    # and the hidden ones did move
    assert (out[~visible] - x[~visible]).abs().max() > 1e-3


def test_fit_loss_decreases_and_best_epoch_is_kept():
    x, _ = blobs()
    # Per-sample masks every epoch (shared_every=0) so epoch losses are comparable.
    mask = MaskSpec(shared_every=0)
    cfg = ClAMConfig(n_clusters=4, init="kmeans++", epochs=12, batch_size=16, lr=0.1, mask=mask)
    res = fit_clam(x, cfg)
    h = res.loss_history
    assert len(h) == res.n_epochs == 12
    assert min(h[-3:]) < 0.5 * h[0]
    assert res.best_epoch == int(np.argmin(h))
    assert res.prototypes.shape == (4, 5) and torch.isfinite(res.prototypes).all()
    assert res.beta > 0


def test_fit_is_deterministic_for_a_seed():
    x, _ = blobs(seed=2)
    a = fit_clam(x, ClAMConfig(n_clusters=4, epochs=3, seed=7))
    b = fit_clam(x, ClAMConfig(n_clusters=4, epochs=3, seed=7))
    c = fit_clam(x, ClAMConfig(n_clusters=4, epochs=3, seed=8, init="gaussian"))
    assert torch.equal(a.prototypes, b.prototypes) and a.loss_history == b.loss_history
    assert not torch.equal(a.prototypes, c.prototypes)


def test_unmasked_ablation_trains():
    x, _ = blobs(seed=3)
    res = fit_clam(x, ClAMConfig(n_clusters=4, masked=False, init="gaussian", epochs=8, seed=0))
    assert res.loss_history[-1] < res.loss_history[0]


def test_dead_prototypes_are_reseeded_to_k_nonempty_clusters():
    x, _ = blobs(n=200, k=2, seed=5)
    # Prototypes far from every point: the AM dynamics give all points to one or two of
    # them, so without re-seeding most clusters would be empty.
    far = torch.full((6, x.shape[1]), 50.0) + torch.arange(6.0)[:, None]
    far[0] = torch.from_numpy(x[0])
    cfg = ClAMConfig(n_clusters=6, epochs=2, seed=0, am=AMParams(beta=1.0))
    res = fit_clam(x, cfg, init_prototypes_=far)
    labels, _ = assign(torch.from_numpy(x), res.prototypes, res.beta, 0.1, 10)
    assert res.n_nonempty == 6 == labels.unique().numel()
    assert res.n_reseeded >= 1


def test_fill_stats_override_changes_the_fill():
    x, _ = blobs(seed=4)
    cfg = ClAMConfig(n_clusters=4, epochs=1, seed=0, mask=MaskSpec(fill="max"))
    own = fit_clam(x, cfg)
    d = x.shape[1]
    other = fit_clam(x, cfg, fill_stats={"max": np.full(d, 100.0, dtype=np.float32)})
    assert other.loss_history[0] > own.loss_history[0]
    with pytest.raises(ValueError, match="fill vector has 2 entries, data has 5"):
        fit_clam(x, cfg, fill_stats={"max": np.zeros(2)})


def test_auto_beta_is_scale_free():
    """beta_from_data scales as 1/distance^2: one default for any units or dimension."""
    x, _ = blobs(seed=6)
    xt = torch.from_numpy(x)
    protos = init_prototypes(xt, 4, "kmeans++", torch.Generator().manual_seed(0))
    b1 = beta_from_data(xt, protos)
    b10 = beta_from_data(10 * xt, 10 * protos)
    assert b10 == pytest.approx(b1 / 100, rel=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_clusters": 0}, "n_clusters must be an integer >= 1"),
        ({"init": "random"}, "init must be"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"epochs": 0}, "epochs and batch_size must be >= 1"),
    ],
)
def test_config_validation_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClAMConfig(**kwargs)


def test_more_clusters_than_points_is_named():
    with pytest.raises(ValueError, match="n_samples=3 should be >= n_clusters=4"):
        fit_clam(np.zeros((3, 2), dtype=np.float32), ClAMConfig(n_clusters=4))
