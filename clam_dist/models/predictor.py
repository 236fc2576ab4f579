"""Turn a model artifact into cluster assignments for rows of input features.

Pure torch/numpy: no I/O, no Ray. The Ray Data pipeline builds one predictor per worker
process (from a loaded artifact) and calls ``predict`` per batch; the in-memory estimators
use the same AM core, so both give the same labels.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from clam_dist.models.am import (
    _bias,
    am_evolve,
    check_dynamics,
    normalize_rows,
    prepare_prototypes,
    step_logits,
)

OPTIONAL_OUTPUTS = ("energy", "margin", "probs")
# How rows are labelled: "am" (T AM steps, then the nearest prototype), "dot" (the largest
# dot-product score, attention clustering's dot similarity), "nearest" (nearest prototype).
RULES = ("am", "dot", "nearest")
ROW_CHUNK = 65_536  # rows per chunk at most
# (rows x prototypes) entries per chunk at most: the (rows, k) score and probability
# blocks stay at 4 MiB whatever k is, so a chunk's elementwise passes over them (min,
# logsumexp, the AM steps' softmax) run in cache. `python jobs/bench_predictor.py`
# (65,536 x 128 rows, 2 threads, energy output; rows/s with 2^24 (64 MiB) -> 2^20
# chunks): nearest rule k = 256 540k -> 801k, k = 1,024 155k -> 322k, k = 4,096 67k ->
# 75k; 5 AM steps 74k -> 150k, 22k -> 39k, 6.2k -> 9.7k. The smaller transients also
# keep an assignment worker's peak memory flat (docs/benchmarks.md, 10M rows).
BLOCK_ELEMS = 1 << 20


class ClusterPredictor:
    """Standardise -> (encode) -> AM dynamics / nearest prototype -> labels and scores."""

    def __init__(
        self,
        rule: str,
        prototypes: torch.Tensor,
        n_features: int,
        beta: float,
        alpha: float,
        steps: int,
        metric: str,
        scaler_mean: np.ndarray | None = None,
        scaler_scale: np.ndarray | None = None,
        encoder: torch.nn.Module | None = None,
    ):
        if rule not in RULES:
            raise ValueError(f"unknown assignment rule {rule!r}; rules: {RULES}")
        self.rule = rule
        self.prototypes = prototypes.float()
        self.device = self.prototypes.device
        # What the dynamics use (unit rows for the spherical metric), prepared once.
        self.model_prototypes = prepare_prototypes(self.prototypes, metric)
        self._proto_sq = (self.model_prototypes * self.model_prototypes).sum(1)
        self.n_features = int(n_features)
        self.beta, self.alpha, self.steps, self.metric = (
            float(beta),
            float(alpha),
            int(steps),
            metric,
        )
        self.mean = (
            None
            if scaler_mean is None
            else torch.as_tensor(scaler_mean, dtype=torch.float32, device=self.device)
        )
        self.scale = (
            None
            if scaler_scale is None
            else torch.as_tensor(scaler_scale, dtype=torch.float32, device=self.device)
        )
        self.encoder = encoder.to(self.device).eval() if encoder is not None else None

    @property
    def k(self) -> int:
        return int(self.prototypes.shape[0])

    @classmethod
    def from_artifact(cls, artifact, device: str = "cpu") -> ClusterPredictor:
        """The artifact says how its rows are assigned and which encoder maps them to the
        model space (``ModelArtifact.assignment_rule`` / ``.encoder()``, answered by the
        method's registration): this module knows rules, never method names."""
        return cls(
            rule=artifact.assignment_rule,
            prototypes=torch.as_tensor(artifact.prototypes).to(device),
            n_features=artifact.n_features,
            beta=artifact.beta,
            alpha=artifact.alpha,
            steps=artifact.steps,
            metric=artifact.metric,
            scaler_mean=artifact.scaler_mean,
            scaler_scale=artifact.scaler_scale,
            encoder=artifact.encoder(),
        )

    def _validate(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(
                f"input has shape {x.shape}, the model expects (n_rows, {self.n_features}) features"
            )
        if not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"input must be numeric, got dtype {x.dtype}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise ValueError(
                f"{bad.sum()} input rows contain NaN/inf (first rows: {rows[:5].tolist()})"
            )
        return x

    @torch.no_grad()
    def to_model_space(self, x: np.ndarray) -> torch.Tensor:
        """Standardise and (for DCAM) encode validated rows."""
        with warnings.catch_warnings():
            # Arrow hands over read-only buffers; nothing here writes into the input, so
            # sharing it is safe and saves a copy per batch.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t = torch.from_numpy(x).to(self.device)
        if self.mean is not None:
            t = t - self.mean
        if self.scale is not None:
            t = t / torch.where(self.scale > 0, self.scale, torch.ones_like(self.scale))
        if self.encoder is not None:
            t = self.encoder(t)
        return t

    @torch.no_grad()
    def predict(self, x: np.ndarray, outputs: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Return 'cluster' (int64) and 'distance' (float32), plus requested extras:
        'energy' (AM energy, novelty), 'margin' (2nd-best minus best squared distance),
        'probs' ((n, k) soft assignment softmax(-beta/2 d^2)).

        One (rows x k) squared-distance GEMM per row chunk labels the rows, on the state
        that decides the label: for the "am" rule the state after the T AM steps (x_T),
        so cluster = argmin and margin and probs describe that same decision; for
        "nearest" and "dot" the (standardised, encoded; unit for the spherical metric)
        input itself. 'distance' is always the squared distance from the INPUT row (in
        model space) to its assigned prototype, and 'energy' the novelty of the input,
        E(x): what evaluation's inertia sums and training's energy_p99 drift threshold
        measures. For "am" both come from the logits of the first AM step, a GEMM the
        dynamics run anyway, so no output adds a GEMM of its own.
        """
        unknown = set(outputs) - set(OPTIONAL_OUTPUTS)
        if unknown:
            raise ValueError(f"unknown outputs {sorted(unknown)}; choose from {OPTIONAL_OUTPUTS}")
        x = self._validate(x)
        parts: dict[str, list[np.ndarray]] = {}
        rows = max(1, min(ROW_CHUNK, BLOCK_ELEMS // self.k))
        for r0 in range(0, x.shape[0], rows):
            for name, value in self._predict_chunk(
                self.to_model_space(x[r0 : r0 + rows]), outputs
            ).items():
                parts.setdefault(name, []).append(value)
        if not parts:  # zero rows
            empty = {"cluster": np.zeros(0, np.int64), "distance": np.zeros(0, np.float32)}
            empty.update(
                {o: np.zeros((0, self.k) if o == "probs" else 0, np.float32) for o in outputs}
            )
            return empty
        return {name: np.concatenate(values) for name, values in parts.items()}

    def scoring_state(
        self, z: torch.Tensor, want_input_energy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(state, input energy or None, input squared distances or None).

        The state is the rows whose distances label them: x_T for "am", else z (unit rows
        for the spherical metric, as the prototypes). For "am" with T > 0 the first AM
        step is written out here so that its logits GEMM, which the dynamics run anyway,
        also gives the INPUT's squared distances to every prototype (rows, k) and, with
        ``want_input_energy``, E(x): no GEMM of their own."""
        unit = normalize_rows(z) if self.metric == "spherical" else z
        if self.rule != "am" or self.steps == 0:
            return unit, None, None
        check_dynamics(self.beta, self.alpha, self.steps)
        # The same ops as am._DirectStep (step_logits, softmax, read-out, lerp),
        # so x_T equals am.assign's bit for bit (tests/test_estimator_shared.py).
        protos, beta = prepare_prototypes(self.model_prototypes, self.metric), self.beta
        bias = _bias(protos, beta, self.metric)
        logits = step_logits(unit, protos, bias, beta)
        # logits = -beta/2 |x - rho|^2 + beta/2 |x|^2 (Euclidean; spherical: unit rho, so
        # -beta/2 |rho|^2 = -beta/2 is missing from the bias and added back here).
        sq = (unit * unit).sum(1, keepdim=True)
        d2_input = (sq + (1.0 if bias is None else 0.0)).sub(logits, alpha=2.0 / beta)
        d2_input.clamp_min_(0.0)
        energy0 = None
        if want_input_energy:
            lse = torch.logsumexp(logits, dim=1)
            energy0 = 0.5 * sq[:, 0] - lse / beta
            if bias is None:
                energy0 += 0.5
        x = torch.lerp(unit, torch.softmax(logits, dim=1) @ protos, float(self.alpha))
        del logits
        # Rows arrive in chunks of at most BLOCK_ELEMS // k, so the evolution takes the
        # direct (unchunked) path (am_evolve normalises x again for the spherical metric,
        # as the step would have).
        state = am_evolve(x, self.model_prototypes, beta, self.alpha, self.steps - 1, self.metric)
        return state, energy0, d2_input

    def _predict_chunk(self, z: torch.Tensor, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        state, energy0, d2_input = self.scoring_state(z, "energy" in outputs)
        d2, dots = score_matrix(state, self.model_prototypes, self._proto_sq, self.rule == "dot")
        if dots is not None:
            # Dot-product rule: the largest score x.rho labels the row (attention's dot
            # similarity); the distance column is still the squared distance to it.
            labels = dots.argmax(dim=1)
            d2 = dots.mul_(-2.0).add_(self._proto_sq).add_((state * state).sum(1, keepdim=True))
            d2.clamp_min_(0.0)
            dist = d2.gather(1, labels[:, None])[:, 0]
        else:
            dist, labels = d2.min(dim=1)
        if d2_input is not None:  # "am": the input row's distance to its prototype
            dist = d2_input.gather(1, labels[:, None])[:, 0]
        out = {"cluster": _np(labels, np.int64), "distance": _np(dist, np.float32)}
        if "margin" in outputs:
            if d2.shape[1] > 1:
                top2 = torch.topk(d2, 2, dim=1, largest=False).values
                margin = top2[:, 1] - top2[:, 0]
            else:
                margin = torch.full_like(dist, float("inf"))
            out["margin"] = _np(margin, np.float32)
        if "energy" in outputs and energy0 is not None:
            out["energy"] = _np(energy0, np.float32)
        if ("energy" in outputs and energy0 is None) or "probs" in outputs:
            logits = d2.mul_(-0.5 * self.beta)  # d2 is not needed any more: reuse it
            lse = torch.logsumexp(logits, dim=1)
            if "energy" in outputs and energy0 is None:
                out["energy"] = _np(lse / -self.beta, np.float32)
            if "probs" in outputs:
                out["probs"] = _np(logits.sub_(lse[:, None]).exp_(), np.float32)
        return out


def score_matrix(
    state: torch.Tensor, protos: torch.Tensor, proto_sq: torch.Tensor, want_dots: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """THE distance GEMM of the assignment path (one call per row chunk, whatever the
    outputs). Returns (d2, None): squared distances (rows, k), or (None, dots) with the
    raw dot products state @ protos^T when the caller labels by the largest dot (the
    distances are then derived from the same product, without a second GEMM)."""
    if want_dots:
        return None, torch.mm(state, protos.t())
    d2 = torch.addmm(proto_sq, state, protos.t(), alpha=-2.0)
    return d2.add_((state * state).sum(1, keepdim=True)).clamp_min_(0.0), None


def _np(t: torch.Tensor, dtype) -> np.ndarray:
    return t.detach().cpu().numpy().astype(dtype, copy=False)


def drift_threshold(artifact, x: np.ndarray) -> dict:
    """The 99th percentile of the AM energy on training rows ``x`` (artifact meta keys
    ``energy_p99`` and ``energy_p99_sample``): later assignments report the share of rows
    above it as drift."""
    energy = ClusterPredictor.from_artifact(artifact).predict(x, ("energy",))["energy"]
    return {"energy_p99": float(np.percentile(energy, 99)), "energy_p99_sample": int(len(x))}
