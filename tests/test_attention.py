"""Attention-based clustering: layer math vs float64 references, the papers' claims on
generated Gaussian mixtures, in-context quantization, the estimator and its bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

from clam_dist import AttentionClustering
from clam_dist.methods.attention.model import AttentionLayer, attention_loss, fit_attention
from clam_dist.models.attention import (
    attention_assign,
    attention_output,
    identity_attention,
    quantize_context,
)


def mixture(k: int, d: int, n_per: int, sep: float, seed: int):
    """k unit-variance Gaussian clusters whose centres are +-sep along distinct axes."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.zeros(k, d)
    for i in range(k):
        centres[i, i % d] = sep if i < d else -sep
    x = torch.cat([centres[i] + torch.randn(n_per, d, generator=g) for i in range(k)])
    labels = torch.arange(k).repeat_interleave(n_per)
    return x, centres, labels


def ref_output(x, mu, beta, score):
    x, mu = x.double(), mu.double()
    logits = beta * x @ mu.T if score == "dot" else -0.5 * beta * torch.cdist(x, mu) ** 2
    return torch.softmax(logits, 1) @ mu


def worst_head_error(mu: torch.Tensor, centres: torch.Tensor) -> float:
    """max over heads of the distance to the nearest true centre."""
    return float(torch.cdist(mu.double(), centres.double()).min(1).values.max())


def worst_centre_error(mu: torch.Tensor, centres: torch.Tensor) -> float:
    """max over true centres of the distance to the nearest head (every centre found)."""
    return float(torch.cdist(centres.double(), mu.double()).min(1).values.max())


# -- layer math ---------------------------------------------------------------------------


@pytest.mark.parametrize("score", ["dot", "distance"])
@pytest.mark.parametrize("block_elems", [1 << 24, 7])  # direct path and chunked autograd path
def test_layer_output_and_gradients_match_float64_reference(score, block_elems):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(13, 4, generator=g)
    mu = torch.randn(5, 4, generator=g, requires_grad=True)
    out = attention_output(x, mu, 0.7, score, block_elems)
    ref_mu = mu.detach().double().requires_grad_(True)
    ref = ref_output(x, ref_mu, 0.7, score)
    torch.testing.assert_close(out.double(), ref.detach(), atol=1e-5, rtol=1e-5)
    w = torch.randn(13, 4, generator=g)
    (out * w).sum().backward()
    (ref * w.double()).sum().backward()
    torch.testing.assert_close(mu.grad.double(), ref_mu.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("score", ["dot", "distance"])
def test_assignment_is_head_with_highest_attention_weight(score):
    g = torch.Generator().manual_seed(1)
    x, mu = torch.randn(50, 3, generator=g), 2 * torch.randn(4, 3, generator=g)
    logits = 1.3 * x.double() @ mu.double().T
    if score == "distance":
        logits = -0.65 * torch.cdist(x.double(), mu.double()) ** 2
    expected = torch.softmax(logits, 1).argmax(1)
    assert torch.equal(attention_assign(x, mu, 1.3, score), expected)
    assert torch.equal(attention_assign(x, mu, 1.3, score, block_elems=5), expected)


def test_loss_is_mean_reconstruction_risk():
    g = torch.Generator().manual_seed(2)
    x, mu = torch.randn(9, 3, generator=g), torch.randn(2, 3, generator=g)
    layer = AttentionLayer(mu, beta=0.5, score="distance")
    expected = ((x.double() - ref_output(x, mu, 0.5, "distance")) ** 2).sum(1).mean()
    assert float(attention_loss(layer, x).detach()) == pytest.approx(float(expected), rel=1e-5)


# -- the papers' claims on Gaussian mixtures ----------------------------------------------


@pytest.mark.parametrize("score", ["dot", "distance"])
def test_two_heads_converge_to_the_true_centres(score):
    """k = 2, symmetric mixture +-c (the paper's proved setting): starting from heads near
    the origin, the distance to the nearest true centre falls and ends below 0.5 (noise
    std 1, |c| = 6, 400 points in 5-D)."""
    x, centres, _ = mixture(2, 5, 200, 6.0, seed=3)
    centres[1] = -centres[0]
    x = torch.cat([centres[0] + torch.randn(200, 5, generator=torch.Generator().manual_seed(4)),
                   centres[1] + torch.randn(200, 5, generator=torch.Generator().manual_seed(5))])  # fmt: skip
    mu0 = 0.3 * torch.randn(2, 5, generator=torch.Generator().manual_seed(6))
    res = fit_attention(x, mu0, 1.0, score, lr=0.1, epochs=15, batch_size=64,
                        generator=torch.Generator().manual_seed(7), keep_snapshots=True)  # fmt: skip
    errors = [worst_head_error(m, centres) for m in res.snapshots]
    assert errors[0] > 5.0
    assert errors[5] < errors[0] / 2  # falls as training proceeds
    assert worst_head_error(res.mu, centres) < 0.5
    assert worst_centre_error(res.mu, centres) < 0.5  # one head per centre


@pytest.mark.parametrize("score", ["dot", "distance"])
def test_k_heads_converge_to_the_true_centres(score):
    """k = 4 well-separated clusters (|c| = 8) from k-means++ seeds (data points ~sqrt(d)
    away from the centres): every head ends within 0.5 of a distinct true centre."""
    x, centres, _ = mixture(4, 6, 150, 8.0, seed=8)
    gen = torch.Generator().manual_seed(9)
    from clam_dist.models.kmeans import kmeans_plus_plus

    mu0 = kmeans_plus_plus(x, 4, gen)
    res = fit_attention(
        x, mu0, 0.5, score, lr=0.1, epochs=15, batch_size=64, generator=gen, keep_snapshots=True
    )
    errors = [worst_head_error(m, centres) for m in res.snapshots]
    assert errors[0] > 1.0
    assert errors[-1] < errors[0] / 2
    assert worst_head_error(res.mu, centres) < 0.5
    assert worst_centre_error(res.mu, centres) < 0.5


@pytest.mark.parametrize("score", ["dot", "distance"])
def test_identity_attention_matches_float64_reference(score):
    g = torch.Generator().manual_seed(10)
    x = torch.randn(20, 3, generator=g)
    ref = x.double()
    for _ in range(3):
        ref = ref_output(ref, ref, 0.8, score)
    out = identity_attention(x, 0.8, 3, score)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    chunked = identity_attention(x, 0.8, 3, score, block_elems=17)  # memory-bounded path
    torch.testing.assert_close(chunked, out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k,d", [(2, 2), (4, 5), (6, 3)])
def test_identity_attention_collapses_each_cluster_onto_one_representative(k, d):
    x, centres, labels = mixture(k, d, 40, 10.0, seed=11)
    res = quantize_context(x, steps=30)  # beta and tolerance derived from the context
    assert res.n_groups == k
    # Groups are exactly the generating clusters, and each representative sits at a centre.
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(labels.numpy(), res.groups.numpy()) == 1.0
    assert worst_centre_error(res.representatives, centres) < 1.0


def test_dot_score_identity_attention_collapses_directions():
    x, _, labels = mixture(4, 5, 40, 10.0, seed=12)
    x = torch.nn.functional.normalize(x, dim=1)  # dot scores compare directions
    res = quantize_context(x, beta=20.0, steps=30, score="dot")
    assert res.n_groups == 4
    for c in range(4):
        assert torch.unique(res.groups[labels == c]).numel() == 1


def test_context_too_large_is_refused_with_the_numbers():
    with pytest.raises(ValueError, match=r"context of 101 rows x 3 dims .* max_context=100"):
        identity_attention(torch.zeros(101, 3), 1.0, 1, max_context=100)
    # quantize_context refuses before any quadratic work, with the cost in the message
    with pytest.raises(ValueError, match=r"101 rows x 3 dims .* 1\.22e\+05 flops per step"):
        quantize_context(torch.zeros(101, 3), max_context=100)
    with pytest.raises(ValueError, match="NaN/inf"):
        quantize_context(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="beta"):
        identity_attention(torch.zeros(3, 2), 0.0, 1)


# -- estimator ------------------------------------------------------------------------------


def test_estimator_fit_predict_recovers_mixture_and_is_deterministic():
    x, centres, labels = mixture(3, 4, 60, 8.0, seed=13)
    X = x.numpy()
    a = AttentionClustering(n_clusters=3, epochs=10, random_state=0).fit(X)
    b = AttentionClustering(n_clusters=3, epochs=10, random_state=0)
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(labels.numpy(), a.labels_) == 1.0
    np.testing.assert_array_equal(b.fit_predict(X), a.labels_)
    np.testing.assert_array_equal(a.predict(X), a.labels_)
    assert a.cluster_centers_.shape == (3, 4)
    w = a.transform(X[:5])
    assert w.shape == (5, 3) and np.allclose(w.sum(1), 1.0)
    assert (a.score_samples(X) <= 0).all()
    dot = AttentionClustering(n_clusters=3, similarity="dot", epochs=10, random_state=0).fit(X)
    assert adjusted_rand_score(labels.numpy(), dot.labels_) == 1.0


# Every check, for both score functions and both inits; no check is expected to fail
# (check_array_api_input skips itself unless SCIPY_ARRAY_API is set).
@parametrize_with_checks(
    [
        AttentionClustering(n_clusters=3, epochs=3, random_state=0),
        AttentionClustering(
            n_clusters=3, similarity="dot", init="random", epochs=3, random_state=0
        ),
    ]
)
def test_sklearn_check_estimator(estimator, check):
    check(estimator)


def test_defaults_fit_predict_transform_score():
    """AttentionClustering(n_clusters=..., random_state=...) from the top-level package."""
    import clam_dist

    x, _, labels = mixture(3, 4, 60, 8.0, seed=18)
    X = x.numpy()
    model = clam_dist.AttentionClustering(n_clusters=3, random_state=0)
    assert model.fit(X) is model
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(labels.numpy(), model.labels_) == 1.0
    np.testing.assert_array_equal(model.predict(X), model.labels_)
    again = clam_dist.AttentionClustering(n_clusters=3, random_state=0).fit_predict(X)
    np.testing.assert_array_equal(again, model.labels_)
    w = model.transform(X)
    assert w.shape == (180, 3) and np.allclose(w.sum(1), 1.0)
    np.testing.assert_array_equal(w.argmax(1), model.labels_)  # highest attention weight
    assert model.score(X) == pytest.approx(float(model.score_samples(X).mean()))
    assert model.score(X) <= 0


@pytest.mark.parametrize(
    "X,kwargs,match",
    [
        (np.array([[0.0, np.nan], [1.0, 1.0], [2.0, 2.0]]), {}, "NaN"),
        (np.array([[0.0, np.inf], [1.0, 1.0], [2.0, 2.0]]), {}, "infinity"),
        (np.zeros((0, 2)), {}, "0 sample"),
        (np.array([["a", "b"], ["c", "d"]]), {}, "[Ss]tring|could not convert"),
        (np.zeros((2, 2)), {"n_clusters": 3}, "n_samples=2 should be >= n_clusters=3"),
        (np.zeros((4, 2)), {"n_clusters": 0}, "n_clusters must be an integer >= 1"),
        (np.zeros((4, 2)), {"beta": 0.0}, "beta must be a finite number > 0"),
        (np.zeros((4, 2)), {"beta": -1.0}, "beta must be a finite number > 0"),
        (np.zeros((4, 2)), {"similarity": "cosine"}, "similarity must be one of"),
        (np.zeros((4, 2)), {"init": "foo"}, "init must be one of"),
    ],
)
def test_estimator_bad_input(X, kwargs, match):
    params = {"n_clusters": 2, "epochs": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        AttentionClustering(**params).fit(X)


def test_predict_wrong_number_of_features():
    x, _, _ = mixture(2, 3, 10, 5.0, seed=14)
    model = AttentionClustering(n_clusters=2, epochs=1, random_state=0).fit(x.numpy())
    with pytest.raises(ValueError, match="3 features"):
        model.predict(np.zeros((4, 5)))


def test_artifact_roundtrip_gives_the_same_labels(tmp_path):
    from clam_dist.artifacts import load_artifact, save_artifact
    from clam_dist.models.predictor import ClusterPredictor

    x, _, _ = mixture(3, 4, 30, 6.0, seed=15)
    X = x.numpy()
    for score in ("distance", "dot"):
        model = AttentionClustering(n_clusters=3, similarity=score, epochs=3, random_state=0).fit(X)
        url = save_artifact(model.to_artifact(), str(tmp_path / score))
        predictor = ClusterPredictor.from_artifact(load_artifact(url))
        np.testing.assert_array_equal(predictor.predict(X)["cluster"], model.predict(X))
