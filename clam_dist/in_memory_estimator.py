"""An in-memory estimator for any registered method: its objective trained by the
distributed trainer's loop in this process (train/in_process.py), from a k-means start.
A method that needs nothing more in memory (tests/toy_method) subclasses it with its
``method`` and defaults; the built-in methods have estimators of their own (restarts,
re-seeding, their own initialisation)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from clam_dist.estimator_base import PrototypeClusterer, quiet_inner_kmeans
from clam_dist.models.am import nearest_prototypes
from clam_dist.models.clam import beta_from_data
from clam_dist.models.seeding import init_prototypes
from clam_dist.train.in_process import fit_config, memory_init, train_in_process
from clam_dist.train.memory_batches import row_chunk_for


class TrainerEstimator(PrototypeClusterer):
    """``fit``: k-means++ refined by Lloyd, beta from the data's distance scale, then
    ``epochs`` of the method's objective (Adam at ``lr``, batches of ``batch_size``, the
    lowest-loss epoch kept); labels and ``predict``: the nearest prototype.

    ``coarse_clusters``/``nprobe``: two levels for large k, as every estimator
    (clam_dist.estimator_base); a subclass that keeps them out of its ``__init__`` fits
    flat only.

    Attributes: ``cluster_centers_``, ``labels_``, ``beta_``, ``loss_history_`` (flat
    fits only), ``n_iter_``, ``n_nonempty_``, ``n_features_in_``; two-level fits also
    ``coarse_centers_``, ``cell_of_fine_``, ``cell_offsets_``, ``agreement_curve_``,
    ``nprobe_``.
    """

    method: ClassVar[str] = ""
    metric = "euclidean"
    _flat_only_attrs = ("loss_history_",)

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        lr: float = 0.01,
        epochs: int = 10,
        batch_size: int = 64,
        coarse_clusters: int | None = None,
        nprobe: int | str = "auto",
        random_state=None,
    ):
        self.n_clusters = n_clusters
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.coarse_clusters = coarse_clusters
        self.nprobe = nprobe
        self.random_state = random_state

    def fit(self, X, y=None) -> TrainerEstimator:
        X = self._check_x(X, reset=True)
        if self._begin_fit(X):
            return self._fit_two_level(X)
        seed = self._seed()
        x = self._tensor(X)
        n, d = x.shape
        with quiet_inner_kmeans():
            protos0 = init_prototypes(
                x, self.n_clusters, "kmeans", torch.Generator().manual_seed(seed)
            )
        beta = beta_from_data(x, protos0)
        cfg = fit_config(
            self.method,
            seed,
            {
                "model": {"n_clusters": int(self.n_clusters), "beta": beta},
                "optim": {"lr": self.lr, "epochs": self.epochs, "batch_size": self.batch_size},
            },
        )
        init = memory_init(protos0.numpy(), beta, n)
        result = train_in_process(cfg, x.numpy(), init, row_chunk=row_chunk_for(n))
        # The trainer finalised the update at its last step: the kept epoch's parameters.
        self._fields = result.update.artifact_fields()
        self.cluster_centers_ = result.update.prototypes().numpy().astype(X.dtype)
        self.beta_ = float(self._fields["beta"])
        self.loss_history_ = list(result.epoch_losses)
        self.n_iter_ = len(result.epoch_losses)
        self.labels_ = self.predict(X)
        self.n_nonempty_ = int(np.unique(self.labels_).size)
        return self

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "cluster_centers_")
        X = self._check_x(X, reset=False)
        if self._is_two_level():
            return self._predict_two_level(X)
        _, idx = nearest_prototypes(self._tensor(X), self._tensor(self.cluster_centers_))
        return idx[:, 0].numpy()

    def _after_two_level(self, z, d2, cells) -> None:
        fallback = None
        if not cells:
            fallback = beta_from_data(self._tensor(z), self._tensor(self.cluster_centers_))
        self.beta_ = self._median_of_cells(cells, "beta_", fallback)
        base = cells[0]._fields if cells else {"alpha": 1.0, "steps": 0, "metric": "euclidean"}
        self._fields = dict(base, beta=self.beta_)

    def _artifact_fields(self) -> dict:
        return {k: v for k, v in self._fields.items() if k in ("beta", "alpha", "steps", "metric")}
