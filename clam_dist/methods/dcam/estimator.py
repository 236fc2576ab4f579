"""scikit-learn style DCAM estimator (in memory). The math lives in clam_dist.methods.dcam.model."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted, validate_data

from clam_dist.estimator_base import PrototypeEstimator
from clam_dist.methods.dcam import DEFAULTS
from clam_dist.methods.dcam.config import JOINT_EPOCHS, DCAMSection, default_hidden
from clam_dist.methods.dcam.model import (
    DCAMConfig,
    EncoderSpec,
    dcam_assign,
    encode,
    encoder_tensors,
    fit_dcam,
    input_scaling,
)
from clam_dist.models.am import check_dynamics
from clam_dist.models.clam import FILL_VALUES, MaskSpec


class DCAM(PrototypeEstimator):
    """Deep clustering with associative memories.

    An autoencoder ("mlp" for tabular rows and embeddings, "conv" for images given as flat
    rows of C*H*W pixels with H, W multiples of 4) is pretrained on reconstruction; then
    the AM dynamics run in latent space around ``n_clusters`` prototypes and the decoded
    evolved latent must reconstruct the input, alongside the plain reconstruction.
    ``recon_bound='select'`` keeps the best joint epoch whose reconstruction loss stays
    within ``recon_tolerance`` (10%) of the pretrained value; 'stop' also ends training
    at the first epoch outside the bound; 'none' ignores it.

    Inputs are scaled as the data asks (``standardize="auto"``): rows already in [0, 1]
    are kept, integer pixel levels in [0, 255] are divided by their largest value (one
    scale for every pixel), anything else is standardised per feature.
    ``transform`` returns the latent representation; ``predict`` the cluster after T AM
    steps in latent space.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of prototypes in latent space.
    encoder : {"mlp", "conv"}, default="mlp"
    latent_dim : int, default=10
    hidden : tuple of int or None, default=None
        Hidden widths (mlp) or channels (conv); None: (512, 256) / (32, 64).
    image_shape : (C, H, W) or None, default=None
        Shape of each flattened row for the conv encoder; None infers a square image
        with 1 or 3 channels and a side that is a multiple of 4 (64 features: (1, 8, 8),
        784: (1, 28, 28), 3072: (3, 32, 32)) and otherwise asks for it.
    beta : float or None, default=None
        AM inverse temperature; None derives it from the pretrained latent space.
    alpha : float, default=0.1
    steps : int, default=10
        AM steps T.
    metric : {"euclidean", "spherical"}, default="euclidean"
    masked : bool, default=True
    mask_ratio : float, default=0.2
    fill : {"mean", "min", "max", "zero"}, default="mean"
    shared_mask_every : int, default=3
    pretrain_epochs : int, default=40
        Autoencoder-only epochs before the joint loss.
    epochs : int, default=40
        Joint (AM + reconstruction) epochs.
    batch_size : int, default=64
    lr : float, default=3e-3
    recon_weight : float, default=1.0
        Weight of the plain reconstruction term in the joint loss.
    recon_tolerance : float, default=0.10
        Allowed relative rise of the reconstruction loss over its pretrained value.
    recon_bound : {"select", "stop", "none"}, default="select"
        The kept state is the one with the lowest masked am term (on fixed masks of the
        data; the unmasked am term when ``masked=False``) among those the bound allows.
    standardize : "auto", bool, default="auto"
        "auto": keep [0, 1] data, divide integer pixel levels in [0, 255] by their
        largest value, standardise anything else per feature; True: always standardise
        per feature; False: never. Constant features are never divided by 0.
    coarse_clusters : None, default=None
        Two levels (large k) are not supported for DCAM yet: its prototypes live in the
        latent space; any value but None is refused by ``fit``.
    nprobe : "auto", "exact" or int, default="auto"
        Unused (two levels only); checked like the other estimators'.
    random_state : int, RandomState or None

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, latent_dim)
        Prototypes in latent space.
    labels_ : ndarray of shape (n_samples,)
    model_ : torch.nn.Module
        The trained autoencoder and prototypes.
    encoder_spec_ : EncoderSpec
    beta_ : float
    scaler_mean_, scaler_scale_ : ndarray of shape (n_features,) or None
    history_, pretrain_history_ : list of dict
        Per-epoch losses of the joint and the pretraining phase.
    best_epoch_ : int
    stopped_early_ : bool
    recon_pretrained_, recon_ratio_ : float
        Reconstruction loss after pretraining, and the kept epoch's ratio to it.
    n_iter_ : int
        Joint epochs run.
    n_nonempty_ : int
    n_features_in_ : int
    """

    method = "dcam"

    def __init__(
        self,
        n_clusters: int = DEFAULTS.n_clusters,
        *,
        encoder: str = DCAMSection.encoder,
        latent_dim: int = DCAMSection.latent_dim,
        hidden: tuple[int, ...] | None = None,
        image_shape: tuple[int, int, int] | None = None,
        beta: float | None = None,
        alpha: float = 0.1,
        steps: int = 10,
        metric: str = "euclidean",
        masked: bool = True,
        mask_ratio: float = 0.2,
        fill: str = "mean",
        shared_mask_every: int = 3,
        pretrain_epochs: int = DCAMSection.pretrain_epochs,
        epochs: int = JOINT_EPOCHS,
        batch_size: int = 64,
        lr: float = DEFAULTS.lr,
        recon_weight: float = DCAMSection.recon_weight,
        recon_tolerance: float = DCAMSection.recon_tolerance,
        recon_bound: str = DCAMSection.recon_bound,
        standardize: bool | str = "auto",
        coarse_clusters: int | None = None,
        nprobe: int | str = "auto",
        random_state=None,
    ):
        self.n_clusters = n_clusters
        self.encoder = encoder
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.image_shape = image_shape
        self.beta = beta
        self.alpha = alpha
        self.steps = steps
        self.metric = metric
        self.masked = masked
        self.mask_ratio = mask_ratio
        self.fill = fill
        self.shared_mask_every = shared_mask_every
        self.pretrain_epochs = pretrain_epochs
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.recon_weight = recon_weight
        self.recon_tolerance = recon_tolerance
        self.recon_bound = recon_bound
        self.standardize = standardize
        self.coarse_clusters = coarse_clusters
        self.nprobe = nprobe
        self.random_state = random_state

    # -- helpers -------------------------------------------------------------------------

    def _check_x(self, X, reset: bool) -> np.ndarray:
        # validate_data rejects NaN/inf, non-numeric and empty input with clear messages
        # and, at predict time, a wrong number of features.
        shape = getattr(X, "shape", None)
        if shape is not None and len(shape) > 2:
            raise ValueError(
                f"X has shape {tuple(shape)}: DCAM takes one flat row per sample; pass images "
                "as X.reshape(len(X), -1) (C-major, C*H*W values per row) with "
                "encoder='conv' and image_shape=(C, H, W)"
            )
        try:
            return validate_data(
                self, X, reset=reset, dtype=[np.float32, np.float64], ensure_min_samples=1
            )
        except ValueError as exc:
            spec = getattr(self, "encoder_spec_", None)
            if reset or spec is None or spec.kind != "conv" or not str(exc).startswith("X has"):
                raise
            c, h, w = spec.image_shape
            raise ValueError(
                f"{exc} The conv encoder was fitted on images of shape (C, H, W) = "
                f"({c}, {h}, {w}), i.e. {spec.n_features} values per flattened row; resize "
                "or pad the images to that shape"
            ) from exc

    def _scaled(self, X: np.ndarray) -> torch.Tensor:
        x = np.asarray(X, dtype=np.float64)
        if self.scaler_mean_ is not None:
            x = (x - self.scaler_mean_) / self.scaler_scale_
        return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))

    def _spec(self, n_features: int) -> EncoderSpec:
        hidden = self.hidden
        if hidden is None:
            hidden = default_hidden(self.encoder)
        return EncoderSpec(
            kind=self.encoder,
            n_features=int(n_features),
            latent_dim=self.latent_dim,
            hidden=tuple(hidden),
            image_shape=None if self.image_shape is None else tuple(self.image_shape),
        )

    # -- API -----------------------------------------------------------------------------

    def fit(self, X, y=None) -> DCAM:
        X = self._check_x(X, reset=True)
        if self._begin_fit(X):
            raise ValueError(
                f"coarse_clusters={self.coarse_clusters!r}: DCAM does not fit two levels "
                "(its prototypes live in the latent space); use coarse_clusters=None"
            )
        if self.beta is not None:
            check_dynamics(self.beta, self.alpha, self.steps)
        if self.fill not in FILL_VALUES:
            raise ValueError(f"fill must be one of {FILL_VALUES}, got {self.fill!r}")
        if self.image_shape is not None and self.encoder == "mlp":
            raise ValueError(
                f"image_shape={self.image_shape!r} is only used by the conv encoder, but "
                f"encoder={self.encoder!r}; pass encoder='conv' or drop image_shape"
            )
        spec = self._spec(X.shape[1])
        scaling = input_scaling(X, self.standardize)
        if scaling is None:
            self.scaler_mean_ = self.scaler_scale_ = None
        else:
            self.scaler_mean_, self.scaler_scale_ = (a.astype(np.float64) for a in scaling)
        config = DCAMConfig(
            spec=spec,
            n_clusters=int(self.n_clusters),
            beta=self.beta,
            alpha=self.alpha,
            steps=self.steps,
            metric=self.metric,
            mask=MaskSpec(
                ratio=self.mask_ratio, fill=self.fill, shared_every=self.shared_mask_every
            ),
            masked=bool(self.masked),
            pretrain_epochs=self.pretrain_epochs,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            recon_weight=self.recon_weight,
            recon_tolerance=self.recon_tolerance,
            recon_bound=self.recon_bound,
            seed=self._seed(),
        )
        result = fit_dcam(self._scaled(X), config)
        self.model_ = result.model
        self.encoder_spec_ = spec
        self.beta_ = result.beta
        self.cluster_centers_ = result.model.prototypes.detach().numpy().copy()  # latent space
        self.recon_pretrained_ = result.recon_pretrained
        self.history_ = result.history
        self.pretrain_history_ = result.pretrain_history
        self.best_epoch_ = result.best_epoch
        self.stopped_early_ = result.stopped_early
        selected = next(h for h in result.history if h["epoch"] == result.best_epoch)
        self.recon_ratio_ = float(selected["recon_ratio"])
        self.n_iter_ = len(result.history)
        self.labels_ = self.predict(X)
        self.n_nonempty_ = int(np.unique(self.labels_).size)
        return self

    def predict(self, X) -> np.ndarray:
        """Cluster of each row: encode, T AM steps in latent space, nearest prototype."""
        check_is_fitted(self, "model_")
        X = self._check_x(X, reset=False)
        labels, _ = dcam_assign(self.model_, self._scaled(X))
        return labels.numpy()

    def transform(self, X) -> np.ndarray:
        """The latent representation f(x), shape (n_samples, latent_dim)."""
        check_is_fitted(self, "model_")
        X = self._check_x(X, reset=False)
        return encode(self.model_, self._scaled(X)).numpy()

    def _artifact_fields(self) -> dict:
        # Prototypes in latent space; the encoder weights ('encoder.*') and architecture
        # (meta['encoder']) travel with them, and the estimator's own standardisation.
        return {
            "beta": self.beta_,
            "alpha": float(self.alpha),
            "steps": int(self.steps),
            "metric": self.metric,
            "tensors": encoder_tensors(self.model_),
            "scaler_mean": self.scaler_mean_,
            "scaler_scale": self.scaler_scale_,
            "meta": {
                "encoder": self.encoder_spec_.to_json(),
                "recon_pretrained": self.recon_pretrained_,
                "recon_ratio": self.recon_ratio_,
            },
        }
