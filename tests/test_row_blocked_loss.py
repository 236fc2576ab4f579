"""clam_loss on a batch larger than one training block: row blocks, forward and backward
per block, must give the whole batch's loss and gradients (float64 reference)."""

from __future__ import annotations

import pytest
import torch

from clam_dist.models import clam as clam_module
from clam_dist.models.clam import clam_loss, draw_mask

N, D, K = 37, 5, 6
BETA, ALPHA, STEPS = 0.7, 0.3, 4
SMALL_BLOCK = K * 8  # 8 rows per block: 5 blocks, the last one short


def _inputs(masked: bool, shared: bool = False):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(N, D, dtype=torch.float64, generator=g, requires_grad=True)
    protos = torch.randn(K, D, dtype=torch.float64, generator=g, requires_grad=True)
    mask = draw_mask(N, D, 0.4, shared, g, dtype=torch.float64) if masked else None
    fill = torch.randn(D, dtype=torch.float64, generator=g)
    return x, protos, mask, fill


@pytest.mark.parametrize("metric", ["euclidean", "spherical"])
@pytest.mark.parametrize(("masked", "shared"), [(True, False), (True, True), (False, False)])
def test_row_blocks_equal_whole_batch(metric, masked, shared):
    x, protos, mask, fill = _inputs(masked, shared)
    whole = clam_loss(x, protos, BETA, ALPHA, STEPS, metric, mask, fill)  # one block
    whole_grads = torch.autograd.grad(whole, (x, protos))
    blocked = clam_loss(x, protos, BETA, ALPHA, STEPS, metric, mask, fill, SMALL_BLOCK)
    blocked_grads = torch.autograd.grad(blocked, (x, protos))
    torch.testing.assert_close(blocked, whole, rtol=1e-12, atol=1e-12)
    for got, want in zip(blocked_grads, whole_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_row_blocks_take_the_blocked_function(monkeypatch):
    """The equality above must not hold by accident: the small block really splits."""
    calls = []
    original = clam_module._loss_sum

    def counting(x, *args):
        calls.append(x.shape[0])
        return original(x, *args)

    monkeypatch.setattr(clam_module, "_loss_sum", counting)
    x, protos, mask, fill = _inputs(True)
    clam_loss(x, protos, BETA, ALPHA, STEPS, "euclidean", mask, fill, SMALL_BLOCK).backward()
    assert calls == [8, 8, 8, 8, 5]
    calls.clear()
    with torch.no_grad():  # no gradients wanted: one pass over the whole batch
        clam_loss(x, protos, BETA, ALPHA, STEPS, "euclidean", mask, fill, SMALL_BLOCK)
    assert calls == [N]


def test_row_blocked_gradcheck():
    x, protos, mask, fill = _inputs(True)

    def loss(a, b):
        return clam_loss(a, b, BETA, ALPHA, STEPS, "euclidean", mask, fill, SMALL_BLOCK)

    assert torch.autograd.gradcheck(loss, (x, protos))


def test_row_blocks_with_frozen_inputs():
    """Only the prototypes train (plain ClAM), or only x (a frozen codebook)."""
    x, protos, mask, fill = _inputs(True)
    args = (BETA, ALPHA, STEPS, "euclidean", mask, fill)
    want_p = torch.autograd.grad(clam_loss(x.detach(), protos, *args), protos)[0]
    got_p = torch.autograd.grad(clam_loss(x.detach(), protos, *args, SMALL_BLOCK), protos)[0]
    torch.testing.assert_close(got_p, want_p, rtol=1e-10, atol=1e-12)
    want_x = torch.autograd.grad(clam_loss(x, protos.detach(), *args), x)[0]
    got_x = torch.autograd.grad(clam_loss(x, protos.detach(), *args, SMALL_BLOCK), x)[0]
    torch.testing.assert_close(got_x, want_x, rtol=1e-10, atol=1e-12)


def test_row_blocks_in_float32_match_float64():
    x, protos, mask, fill = _inputs(True)
    ref = torch.autograd.grad(
        clam_loss(x, protos, BETA, ALPHA, STEPS, "euclidean", mask, fill), protos
    )[0]
    x32, p32 = x.detach().float(), protos.detach().float().requires_grad_()
    got = torch.autograd.grad(
        clam_loss(
            x32, p32, BETA, ALPHA, STEPS, "euclidean", mask.float(), fill.float(), SMALL_BLOCK
        ),
        p32,
    )[0]
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-5)
