"""AM core against a straightforward float64 reference; gradients; chunking; big k."""

from __future__ import annotations

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


@pytest.mark.parametrize("metric", ["euclidean", "spherical"])
@pytest.mark.parametrize("block", [am.DEFAULT_BLOCK_ELEMS, 4])
def test_energy_matches_reference(small, block, metric):
    x, protos = small
    if metric == "spherical":
        ref = ref_energy(
            torch.nn.functional.normalize(x, dim=1),
            torch.nn.functional.normalize(protos, dim=1),
            0.9,
        )
    else:
        ref = ref_energy(x, protos, 0.9)
    torch.testing.assert_close(am.energy(x, protos, 0.9, metric, block_elems=block), ref)


@pytest.mark.parametrize("metric", ["euclidean", "spherical"])
@pytest.mark.parametrize("block", [am.DEFAULT_BLOCK_ELEMS, 4])
def test_nearest_and_energy_is_one_pass_of_both(small, block, metric):
    """The monitor's single pass equals the float64 reference of the nearest prototype
    and of the energy, also in blocks of one row (block=4 < k)."""
    x, protos = small
    xr, pr = x, protos
    if metric == "spherical":
        xr = torch.nn.functional.normalize(x, dim=1)
        pr = torch.nn.functional.normalize(protos, dim=1)
    d2 = ((xr[:, None, :] - pr[None, :, :]) ** 2).sum(-1)
    nearest, idx, e = am.nearest_and_energy(x, protos, 0.9, metric, block_elems=block)
    torch.testing.assert_close(idx, d2.argmin(dim=1))
    torch.testing.assert_close(nearest, d2.min(dim=1).values)
    torch.testing.assert_close(e, ref_energy(xr, pr, 0.9))


@pytest.mark.parametrize("metric", ["euclidean", "spherical"])
@pytest.mark.parametrize("masked", [False, True])
def test_direct_step_gradcheck(small, metric, masked):
    """The fused single-step autograd function (direct path) against finite differences,
    w.r.t. both the state and the prototypes."""
    x, protos = small
    x, protos = x.clone().requires_grad_(), protos.clone().requires_grad_()
    mask = (torch.rand(x.shape, generator=torch.Generator().manual_seed(7)) < 0.4).double()
    m = mask if masked else None
    assert torch.autograd.gradcheck(
        lambda a, b: am.am_step(a, b, 1.3, 0.4, metric, mask=m), (x, protos)
    )
    assert torch.autograd.gradcheck(
        lambda a, b: am.am_evolve(a, b, 0.9, 0.5, 3, metric, mask=m), (x, protos)
    )


@pytest.mark.parametrize("metric", ["euclidean", "spherical"])
def test_chunked_and_direct_evolution_agree_in_value_and_gradient(metric):
    g = torch.Generator().manual_seed(8)
    x, protos0 = torch.randn(40, 6, generator=g), torch.randn(9, 6, generator=g)
    mask = draw_mask(40, 6, 0.3, False, g)
    results = []
    for block in (am.DEFAULT_BLOCK_ELEMS, 360, 100, 17, 1):
        protos = protos0.clone().requires_grad_()
        out = am.am_evolve(x, protos, 1.1, 0.3, 4, metric, mask=mask, block_elems=block)
        (out**2).sum().backward()
        results.append((out.detach(), protos.grad))
    for out, grad in results[1:]:
        torch.testing.assert_close(out, results[0][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-4, atol=1e-4)


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


@pytest.mark.parametrize("block", [am.DEFAULT_BLOCK_ELEMS, 7])
def test_spherical_masked_dynamics_keep_visible_coordinates(small, block):
    """With a mask, scores use the unit vector (cosine geometry) but the state is not
    renormalised: the visible coordinates stay exactly where the normalised start put
    them. Float64 reference: the plain masked step with the read-out of x / ||x||."""
    x, protos = small
    mask = draw_mask(
        x.shape[0], x.shape[1], 0.5, False, torch.Generator().manual_seed(3), dtype=torch.float64
    )
    beta, alpha, steps = 2.0, 0.5, 6
    start = torch.nn.functional.normalize(x, dim=1)
    state = start.clone()
    for _ in range(steps):
        state = state + alpha * mask * (ref_readout(state, protos, beta, "spherical") - state)
    out = am.am_evolve(x, protos, beta, alpha, steps, "spherical", mask=mask, block_elems=block)
    torch.testing.assert_close(out, state, rtol=1e-10, atol=1e-10)
    visible = mask == 0
    assert torch.equal(out[visible], start[visible])
    assert not torch.allclose(out[~visible], start[~visible])


_BIG_K_SCRIPT = """
import resource, torch
from clam_dist.models import am
from clam_dist.models.clam import draw_mask
g = torch.Generator().manual_seed(6)
k, d, n, T = 65536, 128, 256, 6
protos = torch.randn(k, d, generator=g, requires_grad=True)
x = torch.randn(n, d, generator=g)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
labels, _ = am.assign(x, protos.detach(), 0.05, 0.5, T, block_elems=1 << 20)
e = am.energy(x, protos.detach(), 0.05, block_elems=1 << 20)
mask = draw_mask(n, d, 0.2, False, g)
x_t = am.am_evolve(x * (1 - mask), protos, 0.05, 0.5, T, mask=mask, block_elems=1 << 20)
(((x_t - x) * mask) ** 2).sum(1).mean().backward()
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
ok = bool(labels.max() < k and torch.isfinite(e).all() and torch.isfinite(protos.grad).all())
print(ok, grown, n * k * 4 * T)
"""


def test_k_65536_d_128_runs_with_bounded_memory():
    """assign + energy + one backward through T=6 steps at k = 65,536, d = 128, in a fresh
    process so that the peak-RSS reading is this work's alone."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", _BIG_K_SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    ok, grown, unchunked = run.stdout.split()
    assert ok == "True"
    # Unchunked, autograd would keep the (n, k) probabilities of every step:
    # n*k*4*T = 384 MiB. Chunked, growth is a few (k, d) buffers (protos.grad, the
    # per-step gradient, the bias) of 32 MiB each, independent of n and T.
    assert int(grown) < int(unchunked) // 2, (
        f"peak RSS grew {int(grown) / 2**20:.0f} MiB, unchunked needs {int(unchunked) / 2**20:.0f}"
    )


def test_bad_hyperparameters_are_named():
    x, protos = torch.zeros(2, 2), torch.zeros(2, 2)
    with pytest.raises(ValueError, match="beta"):
        am.assign(x, protos, 0.0, 0.1, 10)
    with pytest.raises(ValueError, match="alpha"):
        am.assign(x, protos, 1.0, 1.5, 10)
    with pytest.raises(ValueError, match="metric"):
        am.energy(x, protos, 1.0, metric="manhattan")
