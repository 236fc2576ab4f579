"""The assignment outputs come from one score matrix per batch and match a float64
reference written out longhand (no shared code with the predictor): cluster, margin and
probs of the evolved state x_T (ClAM) or the input (other rules); distance (to the
assigned prototype) and energy of the input."""

from __future__ import annotations

import numpy as np
import pytest
from torch.overrides import TorchFunctionMode

from clam_dist.artifacts import ModelArtifact
from clam_dist.models import predictor as predictor_mod
from clam_dist.models.am import am_evolve
from clam_dist.models.predictor import ClusterPredictor

OUTPUTS = ("energy", "margin", "probs")


def _reference(x, protos, mean, scale, rule, beta, alpha, steps, metric):
    """float64, broadcasting only: standardise, evolve T steps (am), score, derive."""
    z = (x.astype(np.float64) - mean) / scale
    p = protos.astype(np.float64)
    unit = lambda a: a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)  # noqa: E731
    if metric == "spherical":
        z, p = unit(z), unit(p)
    d2 = ((z[:, None, :] - p[None]) ** 2).sum(-1)
    d2_input = d2
    energy = -_lse(-0.5 * beta * d2) / beta  # E(x) of the input, whatever the rule
    if rule == "am":
        for _ in range(steps):
            d2 = ((z[:, None, :] - p[None]) ** 2).sum(-1)
            w = np.exp(-0.5 * beta * (d2 - d2.min(1, keepdims=True)))
            w /= w.sum(1, keepdims=True)
            z = z + alpha * (w @ p - z)
            if metric == "spherical":
                z = unit(z)
    d2 = ((z[:, None, :] - p[None]) ** 2).sum(-1)
    cluster = (z @ p.T).argmax(1) if rule == "dot" else d2.argmin(1)
    srt = np.sort(d2, axis=1)
    logits = -0.5 * beta * d2
    lse = _lse(logits)
    return {
        "cluster": cluster,
        "distance": d2_input[np.arange(len(z)), cluster],  # the input's, whatever the rule
        "margin": srt[:, 1] - srt[:, 0],
        "energy": energy,
        "probs": np.exp(logits - lse[:, None]),
        "_gap": srt[:, 1] - srt[:, 0],  # how decisive the label is
    }


def _lse(a):
    top = a.max(1, keepdims=True)
    return top[:, 0] + np.log(np.exp(a - top).sum(1))


CASES = [
    ("clam", "am", 1.5, 0.3, 4, "euclidean"),
    ("clam", "am", 4.0, 0.5, 3, "spherical"),
    ("kmeans", "nearest", 1.0, 1.0, 0, "euclidean"),
    ("attention", "dot", 2.0, 1.0, 0, "euclidean"),
]


@pytest.mark.parametrize("method,rule,beta,alpha,steps,metric", CASES)
def test_every_column_matches_a_float64_reference(method, rule, beta, alpha, steps, metric):
    rng = np.random.default_rng(11)
    k, d = 7, 5
    protos = rng.normal(size=(k, d)).astype(np.float32) * 2
    mean = rng.normal(size=d).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, d).astype(np.float32)
    x = (rng.normal(size=(300, d)) * 2 * scale + mean).astype(np.float32)
    art = ModelArtifact(method, protos, d, beta, alpha, steps, metric, mean, scale)
    if rule == "dot":
        art.meta["score"] = "dot"
    pred = ClusterPredictor.from_artifact(art)
    assert pred.rule == rule
    out = pred.predict(x, OUTPUTS)
    ref = _reference(x, protos, mean, scale, rule, beta, alpha, steps, metric)
    # Labels must agree wherever float32 rounding cannot decide them (nearly all rows).
    decisive = ref["_gap"] > 1e-3
    assert decisive.mean() > 0.95
    np.testing.assert_array_equal(out["cluster"][decisive], ref["cluster"][decisive])
    same = out["cluster"] == ref["cluster"]
    assert same.mean() > 0.98
    np.testing.assert_allclose(out["distance"][same], ref["distance"][same], rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(out["margin"], ref["margin"], rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(out["energy"], ref["energy"], rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(out["probs"], ref["probs"], rtol=1e-3, atol=1e-5)
    for name in ("distance", "margin", "energy", "probs"):
        assert out[name].dtype == np.float32
    assert out["cluster"].dtype == np.int64


class _GemmCounter(TorchFunctionMode):
    """Counts every matrix product torch is asked for (mm, addmm, matmul, @)."""

    NAMES = {"mm", "addmm", "matmul", "__matmul__", "addmm_", "bmm", "baddbmm"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.NAMES:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method,rule,beta,alpha,steps,metric", CASES)
def test_one_distance_gemm_per_batch_whatever_the_outputs(
    monkeypatch, method, rule, beta, alpha, steps, metric
):
    rng = np.random.default_rng(5)
    protos = rng.normal(size=(6, 4)).astype(np.float32)
    art = ModelArtifact(method, protos, 4, beta, alpha, steps, metric)
    if rule == "dot":
        art.meta["score"] = "dot"
    pred = ClusterPredictor.from_artifact(art)
    x = rng.normal(size=(200, 4)).astype(np.float32)

    calls = []
    real = predictor_mod.score_matrix
    monkeypatch.setattr(
        predictor_mod, "score_matrix", lambda *a, **kw: calls.append(1) or real(*a, **kw)
    )
    # Only the AM steps may multiply matrices besides the score GEMM: measure them alone.
    z = pred.to_model_space(x)
    with _GemmCounter() as dyn:
        if rule == "am":
            am_evolve(z, pred.model_prototypes, beta, alpha, steps, metric)
    every = pred.predict(x, OUTPUTS)
    for outputs in [(), ("energy",), ("margin",), ("probs",), ("energy", "margin"), OUTPUTS]:
        calls.clear()
        with _GemmCounter() as gemms:
            got = pred.predict(x, outputs)
        assert len(calls) == 1, outputs
        assert set(got) == {"cluster", "distance", *outputs}
        for name, value in got.items():  # any subset of outputs gives the same columns
            np.testing.assert_array_equal(value, every[name])
        assert gemms.count == dyn.count + 1, (outputs, gemms.count, dyn.count)

    # Two row chunks: one score GEMM each.
    monkeypatch.setattr(predictor_mod, "BLOCK_ELEMS", 6 * 100)
    calls.clear()
    pred.predict(x, OUTPUTS)
    assert len(calls) == 2
