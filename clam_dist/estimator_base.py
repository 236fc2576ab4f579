"""What every in-memory estimator (KMeans, ClAM, AttentionClustering, DCAM) shares: input
checks, the n_clusters check, seeding, fit_predict, two-level fitting for large k
(``coarse_clusters``/``nprobe``) and ``to_artifact`` with one signature.

A subclass sets ``method`` (its registry name), implements ``fit``/``predict`` and
``_artifact_fields`` (beta, alpha, steps, metric and any extra tensors or meta of its
model); the base turns that into a ``ModelArtifact`` the predictor and the pipeline read.

Two levels (``coarse_clusters`` set): ``fit`` calls ``_begin_fit`` (checks, the few-rows
warning) and, when it answers True, returns ``_fit_two_level(X)``: a coarse k-means
splits the rows into cells and a clone of the estimator (``n_clusters=k_c``,
``coarse_clusters=None``) fits each cell's fine prototypes (models/two_level.py).
``predict`` then labels every row with the nearest fine prototype among those of its
``nprobe_`` nearest cells (``_predict_two_level``), whatever the method's flat rule.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from clam_dist.models.am import normalize_rows
from clam_dist.models.two_level import (
    TwoLevelModel,
    agreement_curve,
    choose_nprobe,
    fit_two_level,
)

# Fewer training rows per cluster than this warns (faiss's threshold, as kmeans_fit).
MIN_ROWS_PER_CLUSTER = 39
# nprobe="auto": the smallest measured nprobe whose labels agree with the exact search's
# on at least this share of the held-out rows.
AUTO_AGREEMENT = 0.99
# Held-out rows the agreement curve is measured on: a tenth of the rows, at most this many.
AGREEMENT_ROWS = 10_000
# The fitted attributes only a two-level fit sets (a flat refit removes them).
TWO_LEVEL_ATTRS = ("coarse_centers_", "cell_of_fine_", "cell_offsets_", "agreement_curve_")


def check_two_level_params(coarse_clusters, nprobe, n_clusters: int) -> None:
    """``coarse_clusters``: None or an integer in [1, n_clusters]; ``nprobe``: "auto",
    "exact" or an integer >= 1."""
    if coarse_clusters is not None and (
        not isinstance(coarse_clusters, (int, np.integer))
        or isinstance(coarse_clusters, bool)
        or not 1 <= coarse_clusters <= n_clusters
    ):
        raise ValueError(
            f"coarse_clusters must be None or an integer in [1, n_clusters={n_clusters}], "
            f"got {coarse_clusters!r}"
        )
    check_nprobe(nprobe, allowed=("auto", "exact"))


def check_nprobe(nprobe, allowed: tuple[str, ...] = ("exact",)) -> None:
    """``nprobe`` is one of the strings ``allowed`` or an integer >= 1."""
    if isinstance(nprobe, str):
        if nprobe in allowed:
            return
    elif isinstance(nprobe, (int, np.integer)) and not isinstance(nprobe, bool) and nprobe >= 1:
        return
    names = " or ".join(repr(a) for a in allowed)
    raise ValueError(f"nprobe must be {names} or an integer >= 1, got {nprobe!r}")


@contextlib.contextmanager
def quiet_inner_kmeans():
    """Silence kmeans_fit's own few-rows warning inside an estimator's fit, which has
    already warned about the same rows (one warning per fit)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"k-means: \d+ rows for \d+ centroids")
        yield


def check_n_clusters(n_clusters, n_samples: int) -> None:
    """n_clusters is an integer in [1, n_samples] (scikit-learn's wording)."""
    if (
        not isinstance(n_clusters, (int, np.integer))
        or isinstance(n_clusters, bool)
        or n_clusters < 1
    ):
        raise ValueError(f"n_clusters must be an integer >= 1, got {n_clusters!r}")
    if n_samples < n_clusters:
        raise ValueError(f"n_samples={n_samples} should be >= n_clusters={n_clusters}")


def compose_scalers(
    outer_mean, outer_scale, inner_mean, inner_scale
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """One standardisation equal to ``inner`` applied after ``outer``:
    ((x - m1) / s1 - m2) / s2 = (x - (m1 + s1 m2)) / (s1 s2). Either may be None."""
    if outer_mean is None:
        return inner_mean, inner_scale
    if inner_mean is None:
        return outer_mean, outer_scale
    m1, s1 = np.asarray(outer_mean, np.float64), np.asarray(outer_scale, np.float64)
    m2, s2 = np.asarray(inner_mean, np.float64), np.asarray(inner_scale, np.float64)
    return m1 + s1 * m2, s1 * s2


class PrototypeEstimator(ClusterMixin, TransformerMixin, BaseEstimator):
    """Base of the estimators whose fitted state is ``cluster_centers_`` (prototypes).

    Attributes set by every ``fit``: ``cluster_centers_``, ``labels_``, ``n_iter_``,
    ``n_nonempty_`` (clusters that own at least one training row), ``n_features_in_``.
    """

    method: ClassVar[str] = ""  # the registry name written into the artifact

    def _check_x(self, X, reset: bool) -> np.ndarray:
        # validate_data rejects NaN/inf, non-numeric and empty input with clear messages,
        # and on predict checks the number of features against n_features_in_.
        return validate_data(
            self, X, reset=reset, dtype=[np.float32, np.float64], ensure_min_samples=1
        )

    @staticmethod
    def _tensor(X) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32))

    def _seed(self) -> int:
        """A fresh integer seed drawn from ``random_state`` (one per fit)."""
        return int(check_random_state(self.random_state).randint(0, 2**31 - 1))

    def _check_n_clusters(self, n_samples: int) -> None:
        check_n_clusters(self.n_clusters, n_samples)

    def fit_predict(self, X, y=None) -> np.ndarray:
        return self.fit(X).labels_

    # -- two levels ----------------------------------------------------------------------

    # Fitted attributes a flat fit sets that a two-level fit has no value for.
    _flat_only_attrs: ClassVar[tuple[str, ...]] = ()

    def _begin_fit(self, X: np.ndarray) -> bool:
        """The checks every fit starts with (n_clusters, coarse_clusters, nprobe) and the
        few-rows warning; True when this fit is two-level (``coarse_clusters`` set)."""
        n = X.shape[0]
        self._check_n_clusters(n)
        coarse = getattr(self, "coarse_clusters", None)
        check_two_level_params(coarse, getattr(self, "nprobe", "auto"), int(self.n_clusters))
        k = int(self.n_clusters)
        if n < MIN_ROWS_PER_CLUSTER * k and not getattr(self, "_cell_fit", False):
            warnings.warn(
                f"{type(self).__name__}: {n} training rows for n_clusters={k} "
                f"({n / k:.1f} rows per cluster); fewer than {MIN_ROWS_PER_CLUSTER} per "
                "cluster gives noisy prototypes",
                UserWarning,
                stacklevel=3,
            )
        two_level = coarse is not None
        stale = self._flat_only_attrs if two_level else (*TWO_LEVEL_ATTRS, "nprobe_")
        for name in stale:
            if name in vars(self):
                delattr(self, name)
        return two_level

    def _is_two_level(self) -> bool:
        return "coarse_centers_" in vars(self)

    def _two_level_space(self, X) -> np.ndarray:
        """Rows as the two-level search compares them: float32, unit rows for the
        spherical metric."""
        x = self._tensor(X)
        if getattr(self, "metric", "euclidean") == "spherical":
            x = normalize_rows(x)
        return x.numpy()

    def _two_level_model(self) -> TwoLevelModel:
        fine = self._tensor(self.cluster_centers_)
        if getattr(self, "metric", "euclidean") == "spherical":
            fine = normalize_rows(fine)
        return TwoLevelModel(
            coarse=np.ascontiguousarray(self.coarse_centers_, dtype=np.float32),
            fine=fine.numpy(),
            cell_of_fine=self.cell_of_fine_,
            cell_offsets=self.cell_offsets_,
        )

    def _fit_two_level(self, X: np.ndarray):
        """Two levels: ``coarse_clusters`` coarse cells, ``n_clusters`` fine prototypes
        fitted by clones of this estimator inside them; a tenth of the rows (at most
        ``AGREEMENT_ROWS``) is held out of the fit to measure the agreement curve that
        ``nprobe="auto"`` reads. Sets the common fitted attributes, then calls
        ``_after_two_level`` for the subclass's own."""
        seed = self._seed()
        n, k, k1 = X.shape[0], int(self.n_clusters), int(self.coarse_clusters)
        z = self._two_level_space(X)
        held = min(AGREEMENT_ROWS, n // 10, n - k)
        if held >= 1:
            perm = np.random.default_rng(seed).permutation(n)
            train, sample = np.sort(perm[held:]), np.sort(perm[:held])
        else:  # too few rows to hold any out: measured on the training rows
            train = sample = np.arange(n)
        # Cells are fitted side by side (threads), so each clone is filed under its seed,
        # which grows with the cell index: sorted seeds give the cells in cell order.
        cell_by_seed: dict[int, PrototypeEstimator] = {}

        def fit_cell(rows: np.ndarray, k_c: int, seed_c: int) -> np.ndarray:
            est = clone(self).set_params(
                n_clusters=int(k_c), coarse_clusters=None, random_state=int(seed_c % (2**31 - 1))
            )
            est._cell_fit = True  # the outer fit warned about rows per cluster already
            cell_by_seed[seed_c] = est.fit(rows)
            return est.cluster_centers_

        model = fit_two_level(z[train], k, k1, fit_cell=fit_cell, seed=seed)
        cells = [cell_by_seed[s] for s in sorted(cell_by_seed)]
        return self._adopt_two_level(model, cells, z[sample], X.dtype, z)

    def _adopt_two_level(
        self,
        model: TwoLevelModel,
        cells: list,
        sample: np.ndarray,
        dtype=np.float32,
        labelled: np.ndarray | None = None,
    ):
        """Take ``model`` as this estimator's fit: the fitted attributes, the agreement
        curve measured on ``sample`` (rows as searched) that ``nprobe="auto"`` reads, and
        ``labels_`` of ``labelled`` (default: the sample). ``cells``: the fitted cells'
        estimators, or objects carrying their attributes (the distributed job's)."""
        self.n_features_in_ = int(model.fine.shape[1])
        self.cluster_centers_ = model.fine.astype(dtype)
        self.coarse_centers_ = model.coarse.astype(dtype)
        self.cell_of_fine_ = model.cell_of_fine
        self.cell_offsets_ = model.cell_offsets
        search = self._two_level_model()
        self.agreement_curve_ = agreement_curve(search, sample)
        if self.nprobe == "auto":
            try:
                self.nprobe_ = choose_nprobe(self.agreement_curve_, AUTO_AGREEMENT)
            except ValueError:  # only ties can keep all cells below it: search all
                self.nprobe_ = "exact"
        else:
            self.nprobe_ = self.nprobe if isinstance(self.nprobe, str) else int(self.nprobe)
        z = sample if labelled is None else labelled
        labels, d2 = search.predict(z, self.nprobe_)
        self.labels_ = labels
        self.n_nonempty_ = int(np.unique(labels).size)
        self.n_iter_ = max((int(getattr(c, "n_iter_", 0)) for c in cells), default=0)
        self._after_two_level(z, d2, cells)
        return self

    def _after_two_level(self, z: np.ndarray, d2: np.ndarray, cells: list) -> None:
        """A subclass's own fitted attributes after a two-level fit: ``z`` the rows as
        searched, ``d2`` each row's squared distance to its label, ``cells`` the fitted
        per-cell estimators (cells with as many prototypes as rows are not fitted)."""

    def _predict_two_level(self, X: np.ndarray) -> np.ndarray:
        labels, _ = self._two_level_model().predict(self._two_level_space(X), self.nprobe_)
        return labels

    @staticmethod
    def _median_of_cells(cells: list, name: str, default: float) -> float:
        values = [float(getattr(c, name)) for c in cells if hasattr(c, name)]
        return float(np.median(values)) if values else float(default)

    def _artifact_fields(self) -> dict:
        """beta, alpha, steps, metric, and optionally tensors, meta (merged into the
        artifact's meta), scaler_mean / scaler_scale (the estimator's own standardisation,
        applied after the caller's)."""
        raise NotImplementedError

    def _params_for_meta(self) -> dict:
        params = {k: v for k, v in self.get_params().items() if k != "random_state"}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}

    def to_artifact(self, scaler_mean=None, scaler_scale=None, meta: dict | None = None):
        """The fitted model as a ``ModelArtifact`` (save it with ``save_artifact``).

        ``scaler_mean``/``scaler_scale``: the standardisation the caller applied before
        ``fit`` (the artifact then takes raw rows); composed with the estimator's own
        when it has one (DCAM's ``standardize=True``).
        """
        from clam_dist.artifacts import ModelArtifact

        check_is_fitted(self, "cluster_centers_")
        fields = dict(self._artifact_fields())
        mean, scale = compose_scalers(
            scaler_mean,
            scaler_scale,
            fields.pop("scaler_mean", None),
            fields.pop("scaler_scale", None),
        )
        extra_meta = fields.pop("meta", {})
        tensors = dict(fields.pop("tensors", {}))
        if self._is_two_level():
            # The fine prototypes are the artifact's prototypes (grouped by cell); the
            # predictor finds the cells in tensors "coarse" and "cell_offsets".
            tensors["coarse"] = np.ascontiguousarray(self.coarse_centers_, dtype=np.float32)
            tensors["cell_offsets"] = np.ascontiguousarray(self.cell_offsets_, dtype=np.int64)
            extra_meta = dict(
                extra_meta,
                two_level={
                    "coarse_clusters": int(self.coarse_centers_.shape[0]),
                    "nprobe": self.nprobe_,
                    "agreement_curve": list(self.agreement_curve_),
                },
            )
        return ModelArtifact(
            method=self.method,
            prototypes=self.cluster_centers_,
            n_features=int(self.n_features_in_),
            scaler_mean=mean,
            scaler_scale=scale,
            tensors=tensors,
            meta=dict(meta or {}, params=self._params_for_meta(), **extra_meta),
            **fields,
        )


class PrototypeClusterer(PrototypeEstimator):
    """Euclidean distances to the prototypes as the transform (KMeans and ClAM)."""

    def transform(self, X) -> np.ndarray:
        """Euclidean distances to every cluster centre, shape (n_samples, n_clusters)."""
        check_is_fitted(self, "cluster_centers_")
        X = self._check_x(X, reset=False)
        x = self._tensor(X)
        c = self._tensor(self.cluster_centers_)
        if self.metric == "spherical":
            x, c = normalize_rows(x), normalize_rows(c)
        return torch.cdist(x.double(), c.double()).numpy()
