"""AM core against a straightforward float64 reference; gradients; chunking; big k."""

from __future__ import annotations

import resource

import pytest
import torch

from clam_dist.models import am
from clam_dist.models.clam import clam_loss, draw_mask


def ref_readout(x, protos, beta, metric):
    if metric == "spherical":
        x, protos = (
            torch.nn.functional.normalize(x, dim=1),
            torch.nn.functional.normalize(protos, dim=1),
        )
    d2 = ((x[:, None, :] - protos[None, :, :]) ** 2).sum(-1)
    return torch.softmax(-0.5 * beta * d2, dim=1) @ protos


def ref_energy(x, protos, beta):
    d2 = ((x[:, None, :] - protos[None, :, :]) ** 2).sum(-1)
    return -torch.logsumexp(-0.5 * beta * d2, dim=1) / beta


@pytest.fixture
def small():
    g = torch.Generator().manual_seed(0)
    return torch.randn(13, 6, generator=g, dtype=torch.float64), torch.randn(
        5, 6, generator=g, dtype=torch.float64
    )


@pytest.mark.parametrize("metric", ["euclidean", "spherical"])
@pytest.mark.parametrize("block", [am.DEFAULT_BLOCK_ELEMS, 7])
def test_step_matches_float64_reference(small, metric, block):
    x, protos = small
    beta, alpha = 1.7, 0.3
    xin = torch.nn.functional.normalize(x, dim=1) if metric == "spherical" else x
    expected = xin + alpha * (ref_readout(xin, protos, beta, metric) - xin)
    if metric == "spherical":
        expected = torch.nn.functional.normalize(expected, dim=1)
    got = am.am_step(xin, protos, beta, alpha, metric, block_elems=block)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("block", [am.DEFAULT_BLOCK_ELEMS, 4])
def test_energy_matches_reference(small, block):
    x, protos = small
    torch.testing.assert_close(
        am.energy(x, protos, 0.9, block_elems=block), ref_energy(x, protos, 0.9)
    )


@pytest.mark.parametrize("metric", ["euclidean", "spherical"])
def test_chunked_readout_gradcheck(small, metric):
    x, protos = small
    x = x[:6].clone().requires_grad_()
    protos = protos.clone().requires_grad_()
    protos_used = am.prepare_prototypes(protos, metric)
    assert torch.autograd.gradcheck(
        lambda a, b: am._ChunkedReadout.apply(
            a, am.prepare_prototypes(b, metric), 1.3, metric, 4, 2
        ),
        (x, protos),
    )
    # and the chunked path equals the direct path
    direct = am.attention_readout(x, protos_used, 1.3, metric)
    chunked = am.attention_readout(x, protos_used, 1.3, metric, block_elems=5)
    torch.testing.assert_close(direct, chunked)


def test_clam_loss_gradcheck_through_all_steps(small):
    x, protos = small
    protos = protos.clone().requires_grad_()
    mask = draw_mask(
        x.shape[0], x.shape[1], 0.3, False, torch.Generator().manual_seed(1), dtype=torch.float64
    )
    fill = x.mean(0)
    for block in (am.DEFAULT_BLOCK_ELEMS, 8):
        assert torch.autograd.gradcheck(
            lambda p, b=block: clam_loss_block(x, p, mask, fill, b), (protos,)
        )


def clam_loss_block(x, protos, mask, fill, block):
    """The masked ClAM loss with an explicit block size, so small blocks exercise the
    chunked custom autograd function through every step."""
    x_start = x * (1 - mask) + fill * mask
    x_t = am.am_evolve(x_start, protos, 0.8, 0.2, 4, mask=mask, block_elems=block)
    return (((x_t - x) * mask) ** 2).sum(1).mean()


def test_clam_loss_matches_manual_unroll(small):
    x, protos = small
    mask = draw_mask(
        x.shape[0], x.shape[1], 0.3, False, torch.Generator().manual_seed(2), dtype=torch.float64
    )
    fill = x.mean(0)
    state = x * (1 - mask) + fill * mask
    for _ in range(5):
        state = state + 0.1 * mask * (ref_readout(state, protos, 1.2, "euclidean") - state)
    expected = (((state - x) * mask) ** 2).sum(1).mean()
    torch.testing.assert_close(clam_loss(x, protos, 1.2, 0.1, 5, mask=mask, fill=fill), expected)


def test_masked_dynamics_leave_visible_coordinates_untouched(small):
    x, protos = small
    mask = draw_mask(
        x.shape[0], x.shape[1], 0.5, False, torch.Generator().manual_seed(3), dtype=torch.float64
    )
    out = am.am_evolve(x, protos, 2.0, 0.5, 10, mask=mask)
    visible = mask == 0
    assert torch.equal(out[visible], x[visible])
    assert not torch.allclose(out[~visible], x[~visible])


def test_assign_is_argmin_after_evolution_and_chunking_agrees():
    g = torch.Generator().manual_seed(4)
    x, protos = torch.randn(300, 8, generator=g), torch.randn(20, 8, generator=g)
    labels, dist = am.assign(x, protos, 0.7, 0.1, 10)
    labels_c, dist_c = am.assign(x, protos, 0.7, 0.1, 10, block_elems=64)
    assert torch.equal(labels, labels_c)
    torch.testing.assert_close(dist, dist_c)
    xt = am.am_evolve(x, protos, 0.7, 0.1, 10)
    assert torch.equal(labels, torch.cdist(xt, protos).argmin(1))


def test_large_beta_and_far_points_stay_finite():
    x = torch.tensor([[1e4, -1e4, 0.0], [0.0, 0.0, 0.0]])
    protos = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    for beta in (1e-6, 1.0, 1e4):
        assert torch.isfinite(am.am_evolve(x, protos, beta, 1.0, 3)).all()
        assert torch.isfinite(am.energy(x, protos, beta)).all()
        for block in (am.DEFAULT_BLOCK_ELEMS, 1):
            assert torch.isfinite(am.attention_readout(x, protos, beta, block_elems=block)).all()


def test_spherical_states_stay_on_the_sphere():
    g = torch.Generator().manual_seed(5)
    out = am.am_evolve(
        torch.randn(50, 4, generator=g), torch.randn(3, 4, generator=g), 3.0, 0.3, 5, "spherical"
    )
    torch.testing.assert_close(out.norm(dim=1), torch.ones(50))


def test_k_65536_d_128_runs_with_bounded_memory():
    g = torch.Generator().manual_seed(6)
    k, d, n = 65_536, 128, 256
    protos = torch.randn(k, d, generator=g, requires_grad=True)
    x = torch.randn(n, d, generator=g)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    labels, _ = am.assign(x, protos.detach(), 0.05, 0.5, 2, block_elems=1 << 20)
    e = am.energy(x, protos.detach(), 0.05, block_elems=1 << 20)
    mask = draw_mask(n, d, 0.2, False, g)
    loss = clam_loss_block(x, protos, mask, x.mean(0), 1 << 20)
    loss.backward()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert labels.max() < k and torch.isfinite(e).all() and torch.isfinite(protos.grad).all()
    # An unchunked path would hold n*k*4 bytes per step (64 MiB) times T for autograd, plus
    # the (n, k) probabilities of every step; chunked we stay well below that.
    assert grown < 3 * n * k * 4, f"peak RSS grew by {grown / 2**20:.0f} MiB"


def test_bad_hyperparameters_are_named():
    x, protos = torch.zeros(2, 2), torch.zeros(2, 2)
    with pytest.raises(ValueError, match="beta"):
        am.assign(x, protos, 0.0, 0.1, 10)
    with pytest.raises(ValueError, match="alpha"):
        am.assign(x, protos, 1.0, 1.5, 10)
    with pytest.raises(ValueError, match="metric"):
        am.energy(x, protos, 1.0, metric="manhattan")
