"""Turn a model artifact into cluster assignments for rows of input features.

Pure torch/numpy: no I/O, no Ray. The Ray Data pipeline builds one predictor per worker
process (from a loaded artifact) and calls ``predict`` per batch; the in-memory estimators
use the same AM core, so both give the same labels.

Two-level artifacts (tensors ``coarse`` and ``cell_offsets``, meta ``two_level``; see
clam_dist/models/two_level.py) are labelled by the nearest prototype among those of each
row's ``nprobe`` nearest coarse cells, as the estimators' two-level ``predict``;
``nprobe="exact"`` is the flat path with the "nearest" rule.
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
from clam_dist.models.two_level import probed_pairs

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
        coarse: torch.Tensor | None = None,
        cell_offsets: np.ndarray | None = None,
        nprobe: int | str = "exact",
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
        self.coarse = self.cell_offsets = None
        if (coarse is None) != (cell_offsets is None):
            raise ValueError("a two-level model needs both coarse and cell_offsets, or neither")
        if coarse is not None:
            if rule != "nearest":
                raise ValueError(
                    f"a two-level model labels rows by the nearest prototype, got rule {rule!r}"
                )
            self.coarse, self.cell_offsets = _check_two_level(
                coarse, cell_offsets, self.prototypes.shape
            )
            self.coarse = self.coarse.to(self.device)
            self._coarse_sq = (self.coarse * self.coarse).sum(1)
            # Empty cells (no prototype) are never probed.
            empty = torch.from_numpy(np.diff(self.cell_offsets) == 0).to(self.device)
            self._coarse_sq[empty] = float("inf")
        self.nprobe: int | str = "exact"
        self.nprobe = self._check_nprobe(nprobe)

    @property
    def k(self) -> int:
        return int(self.prototypes.shape[0])

    @property
    def two_level(self) -> bool:
        return self.coarse is not None

    def _check_nprobe(self, nprobe) -> int | str:
        """None: this predictor's nprobe; "exact" or an integer >= 1. A flat model is
        always searched exactly, whatever ``nprobe`` says."""
        if nprobe is None:
            return self.nprobe
        if not (
            nprobe == "exact"
            if isinstance(nprobe, str)
            else isinstance(nprobe, int | np.integer)
            and not isinstance(nprobe, bool)
            and nprobe >= 1
        ):
            raise ValueError(f"nprobe must be 'exact' or an integer >= 1, got {nprobe!r}")
        return nprobe if isinstance(nprobe, str) else int(nprobe)

    @classmethod
    def from_artifact(
        cls, artifact, device: str = "cpu", nprobe: int | str | None = None
    ) -> ClusterPredictor:
        """The artifact says how its rows are assigned and which encoder maps them to the
        model space (``ModelArtifact.assignment_rule`` / ``.encoder()``, answered by the
        method's registration): this module knows rules, never method names.

        A two-level artifact (tensors ``coarse`` and ``cell_offsets``) is searched at
        ``nprobe`` (None: the artifact's ``meta["two_level"]["nprobe"]``)."""
        coarse = artifact.tensors.get("coarse")
        offsets = artifact.tensors.get("cell_offsets")
        two_level = coarse is not None or offsets is not None
        if nprobe is None:
            nprobe = artifact.meta.get("two_level", {}).get("nprobe", "exact")
        return cls(
            rule="nearest" if two_level else artifact.assignment_rule,
            prototypes=torch.as_tensor(artifact.prototypes).to(device),
            n_features=artifact.n_features,
            beta=artifact.beta,
            alpha=artifact.alpha,
            steps=artifact.steps,
            metric=artifact.metric,
            scaler_mean=artifact.scaler_mean,
            scaler_scale=artifact.scaler_scale,
            encoder=artifact.encoder(),
            coarse=None if coarse is None else torch.from_numpy(np.array(coarse, np.float32)),
            cell_offsets=offsets,
            nprobe=nprobe,
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
    def predict(
        self, x: np.ndarray, outputs: Sequence[str] = (), nprobe: int | str | None = None
    ) -> dict[str, np.ndarray]:
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

        Two-level models at an integer ``nprobe`` (None: the predictor's): 'cluster' is
        the nearest prototype among those of the row's ``nprobe`` nearest coarse cells
        and 'distance' the squared distance to it (model space, as above); 'energy',
        'margin' and 'probs' are computed over the PROBED cells' prototypes only (energy
        -logsumexp(-beta/2 d^2)/beta over them, an upper bound of the exact one; margin
        between their two best, inf when only one was probed; probs zero outside them).
        ``nprobe="exact"`` is the flat path with the "nearest" rule over all prototypes.
        """
        unknown = set(outputs) - set(OPTIONAL_OUTPUTS)
        if unknown:
            raise ValueError(f"unknown outputs {sorted(unknown)}; choose from {OPTIONAL_OUTPUTS}")
        nprobe = self._check_nprobe(nprobe)
        x = self._validate(x)
        parts: dict[str, list[np.ndarray]] = {}
        probed = self.two_level and nprobe != "exact"
        rows = max(1, min(ROW_CHUNK, BLOCK_ELEMS // self.k))
        if probed and "probs" not in outputs:
            rows = ROW_CHUNK  # the probed search's blocks are bounded per cell
        for r0 in range(0, x.shape[0], rows):
            z = self.to_model_space(x[r0 : r0 + rows])
            chunk = (
                self._probed_chunk(z, outputs, nprobe)
                if probed
                else self._predict_chunk(z, outputs)
            )
            for name, value in chunk.items():
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

    def _probed_chunk(
        self, z: torch.Tensor, outputs: Sequence[str], nprobe: int
    ) -> dict[str, np.ndarray]:
        """The two-level search of one chunk (see ``predict``). The (row, probed cell)
        pairs are grouped by cell: one GEMM per cell of the rows probing it against its
        prototypes, in blocks of at most BLOCK_ELEMS entries, with a running best per
        row (the same operations as two_level.TwoLevelModel.predict, so the same labels)
        and, when asked, a running second best, logsumexp and dense probabilities."""
        unit = normalize_rows(z) if self.metric == "spherical" else z
        m = unit.shape[0]
        offsets = self.cell_offsets
        nprobe = min(int(nprobe), int(np.count_nonzero(np.diff(offsets))))
        pair_rows, counts = probed_pairs(unit, self.coarse, self._coarse_sq, nprobe)
        x_sq = (unit * unit).sum(1)
        inf = float("inf")
        best = torch.full((m,), inf, dtype=unit.dtype, device=unit.device)
        best_idx = torch.full((m,), -1, dtype=torch.long, device=unit.device)
        want_margin, want_energy = "margin" in outputs, "energy" in outputs
        first = torch.full_like(best, inf) if want_margin else None
        second = torch.full_like(best, inf) if want_margin else None
        lse = torch.full_like(best, -inf) if want_energy else None
        logits = (
            torch.full((m, self.k), -inf, dtype=unit.dtype, device=unit.device)
            if "probs" in outputs
            else None
        )
        extras = want_margin or want_energy or logits is not None
        protos, p_sq = self.model_prototypes, self._proto_sq
        start = 0
        for c, count in enumerate(counts):
            if count == 0:
                continue
            rows = pair_rows[start : start + count]
            start += count
            f0, f1 = int(offsets[c]), int(offsets[c + 1])
            chunk = max(1, BLOCK_ELEMS // (f1 - f0))
            for q0 in range(0, count, chunk):
                rr = rows[q0 : q0 + chunk]
                # ||f||^2 - 2 x.f: the row's ||x||^2 is added for the extras / at the end.
                block = torch.addmm(p_sq[f0:f1], unit[rr], protos[f0:f1].t(), alpha=-2.0)
                vals = block.amin(dim=1)
                better = vals < best[rr]
                won = rr[better]
                best[won] = vals[better]
                best_idx[won] = block[better].argmin(dim=1) + f0
                if not extras:
                    continue
                d2 = block.add_(x_sq[rr, None]).clamp_min_(0.0)
                if want_margin:
                    top = torch.topk(d2, min(2, f1 - f0), dim=1, largest=False).values
                    v1 = top[:, 0]
                    v2 = top[:, 1] if top.shape[1] > 1 else torch.full_like(v1, inf)
                    f_old, s_old = first[rr], second[rr]
                    first[rr] = torch.minimum(f_old, v1)
                    # The second smallest of {f_old <= s_old, v1 <= v2}.
                    second[rr] = torch.minimum(torch.maximum(f_old, v1), torch.minimum(s_old, v2))
                if want_energy:
                    lse[rr] = torch.logaddexp(
                        lse[rr], torch.logsumexp(d2 * (-0.5 * self.beta), dim=1)
                    )
                if logits is not None:
                    logits[rr, f0:f1] = d2 * (-0.5 * self.beta)
        dist = best.add_(x_sq).clamp_(min=0.0)
        out = {"cluster": _np(best_idx, np.int64), "distance": _np(dist, np.float32)}
        if want_margin:
            out["margin"] = _np(second - first, np.float32)
        if want_energy:
            out["energy"] = _np(lse / -self.beta, np.float32)
        if logits is not None:
            out["probs"] = _np(torch.softmax(logits, dim=1), np.float32)
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


def _check_two_level(
    coarse: torch.Tensor, cell_offsets, proto_shape: torch.Size
) -> tuple[torch.Tensor, np.ndarray]:
    """A two-level model's coarse centres (k1, d_model) float32 and cell offsets (k1 + 1,
    int64, from 0 to k, non-decreasing), checked against the prototypes' shape."""
    k, d = int(proto_shape[0]), int(proto_shape[1])
    coarse = torch.as_tensor(coarse).float()
    offsets = np.asarray(cell_offsets)
    if coarse.ndim != 2 or coarse.shape[0] < 1 or coarse.shape[1] != d:
        raise ValueError(
            f"two-level coarse centres must have shape (k1, {d}), got {tuple(coarse.shape)}"
        )
    k1 = coarse.shape[0]
    if (
        offsets.shape != (k1 + 1,)
        or not np.issubdtype(offsets.dtype, np.integer)
        or offsets[0] != 0
        or offsets[-1] != k
        or np.any(np.diff(offsets) < 0)
    ):
        raise ValueError(
            f"two-level cell_offsets must be {k1 + 1} non-decreasing integers from 0 to "
            f"k={k}, got {offsets.dtype} of shape {offsets.shape}"
        )
    return coarse, offsets.astype(np.int64)


def _np(t: torch.Tensor, dtype) -> np.ndarray:
    return t.detach().cpu().numpy().astype(dtype, copy=False)


def drift_threshold(artifact, x: np.ndarray) -> dict:
    """The 99th percentile of the AM energy on training rows ``x`` (artifact meta keys
    ``energy_p99`` and ``energy_p99_sample``): later assignments report the share of rows
    above it as drift."""
    energy = ClusterPredictor.from_artifact(artifact).predict(x, ("energy",))["energy"]
    return {"energy_p99": float(np.percentile(energy, 99)), "energy_p99_sample": int(len(x))}
