"""DCAM: deep clustering with associative memories (Saha et al., arXiv 2601.00963).

Pure torch, no Ray, no I/O. An autoencoder (encoder f, decoder g; fully connected for
tabular rows and embeddings, convolutional for images) and k prototypes R in latent space.

Loss (DESIGN.md): with z = f(x) and z_T the latent after T AM steps towards R,

    loss = ||g(z_T) - x||^2  +  recon_weight * ||g(z) - x||^2

(means over the batch of per-row squared errors). The first term is the energy-based
clustering term: a latent that the dynamics carry onto its memory must still decode to the
input, which pulls prototypes onto representable points and pulls the latents of one
cluster together. The masked variant is ClAM's pattern completion in latent space: hide a
fraction of the latent coordinates, fill them (batch mean by default), evolve only the
hidden ones, decode and reconstruct x.

Training: pretrain the autoencoder on reconstruction, initialise R by k-means on the
latents, then train everything jointly while tracking the reconstruction loss against its
pretrained value; ``recon_bound`` keeps (select) or stops at (stop) the best epoch whose
reconstruction stays within ``recon_tolerance`` (10%) of the pretrained value.

ONE implementation of that training: ``objective.py: DCAMObjective`` on the distributed
loop's Trainer. ``fit_dcam`` (the estimator) and the Tune trial run the same Trainer in
this process (``DCAMTraining``, on ``train/in_process.py``); ``DCAMModel`` is the plain
nn.Module whose forward returns the losses.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from clam_dist.methods.dcam import DEFAULTS
from clam_dist.methods.dcam.config import JOINT_EPOCHS, DCAMSection, default_hidden
from clam_dist.models.am import Metric, am_evolve, assign, check_dynamics, check_metric
from clam_dist.models.clam import MaskSpec
from clam_dist.models.scaling import is_identity, scaling_of_rows
from clam_dist.train.in_process import InProcessTrainer, fit_config, memory_init
from clam_dist.train.memory_batches import row_chunk_for

EncoderKind = Literal["mlp", "conv"]
ENCODER_KINDS: tuple[str, ...] = ("mlp", "conv")
RECON_BOUNDS: tuple[str, ...] = ("select", "stop", "none")
EVAL_CHUNK = 4096


# ---------------------------------------------------------------------------------------
# Architecture
# ---------------------------------------------------------------------------------------


def infer_image_shape(n_features: int) -> tuple[int, int, int]:
    """(C, H, W) for a square image with 1 or 3 channels whose side is a multiple of 4."""
    for c in (1, 3):
        side = math.isqrt(n_features // c) if n_features % c == 0 else 0
        if side > 0 and c * side * side == n_features and side % 4 == 0:
            return (c, side, side)
    raise ValueError(
        f"cannot infer an image shape from {n_features} features: the conv encoder needs "
        "square 1- or 3-channel images with a side that is a multiple of 4 (8x8, 28x28, "
        "32x32); pass image_shape=(C, H, W)"
    )


def input_scaling(
    x: np.ndarray, standardize: bool | str = "auto"
) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, scale) of the input transform ``(x - mean) / scale``, or None for the
    identity, by the one rule of ``clam_dist/models/scaling.py`` ("auto": [0, 1] rows kept,
    integer pixel levels in [0, 255] divided by their largest value, anything else
    standardised per feature; constant features never divided by 0)."""
    mean, scale = scaling_of_rows(x, standardize)
    return None if is_identity(mean, scale) else (mean, scale)


@dataclass(frozen=True)
class EncoderSpec:
    """The autoencoder's architecture; JSON-able (stored in artifacts as meta['encoder']).

    kind "mlp": widths ``hidden`` then ``latent_dim``, ReLU between layers.
    kind "conv": two stride-2 3x3 convolutions with ``hidden`` = (c1, c2) channels, so
        H and W must be multiples of 4 (8x8 digits, 28x28 MNIST, 32x32 CIFAR fit
        without padding), then a linear layer to ``latent_dim``. Input rows are flat
        (C*H*W) vectors in C-major order, as ``image.reshape(n, -1)`` gives.
    """

    kind: EncoderKind
    n_features: int
    latent_dim: int = 10
    hidden: tuple[int, ...] | None = None  # None: config.DEFAULT_HIDDEN of the kind
    image_shape: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ENCODER_KINDS:
            raise ValueError(f"encoder kind must be one of {ENCODER_KINDS}, got {self.kind!r}")
        if self.hidden is None:
            object.__setattr__(self, "hidden", default_hidden(self.kind))
        for name in ("n_features", "latent_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be >= 1, got {self.hidden}")
        if self.kind == "mlp":
            return
        if len(self.hidden) != 2:
            raise ValueError(f"the conv encoder takes hidden=(c1, c2) channels, got {self.hidden}")
        shape = self.image_shape or infer_image_shape(self.n_features)
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {shape}")
        c, h, w = shape
        if c * h * w != self.n_features:
            raise ValueError(
                f"image_shape {shape} has {c * h * w} values but the input has {self.n_features} features"
            )
        if h % 4 or w % 4:
            raise ValueError(
                f"image_shape {shape} does not fit the conv encoder: height and width must be "
                "multiples of 4 (two stride-2 layers), e.g. 8x8, 28x28, 32x32; pad the images"
            )
        object.__setattr__(self, "image_shape", shape)

    def to_json(self) -> dict:
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        out["image_shape"] = None if self.image_shape is None else list(self.image_shape)
        return out

    @classmethod
    def from_json(cls, data: dict) -> EncoderSpec:
        try:
            shape = data.get("image_shape")
            return cls(
                kind=data["kind"],
                n_features=int(data["n_features"]),
                latent_dim=int(data["latent_dim"]),
                hidden=tuple(int(h) for h in data["hidden"]),
                image_shape=None if shape is None else tuple(int(s) for s in shape),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"encoder description {data!r} is incomplete: {exc}") from exc


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:  # no activation on the output: latents and inputs are real-valued
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ConvEncoder(nn.Module):
    def __init__(self, spec: EncoderSpec):
        super().__init__()
        c, h, w = spec.image_shape
        c1, c2 = spec.hidden
        self.image_shape = (c, h, w)
        self.conv = nn.Sequential(
            nn.Conv2d(c, c1, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(c2 * (h // 4) * (w // 4), spec.latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x.reshape(x.shape[0], *self.image_shape)).flatten(1))


class ConvDecoder(nn.Module):
    def __init__(self, spec: EncoderSpec):
        super().__init__()
        c, h, w = spec.image_shape
        c1, c2 = spec.hidden
        self.grid = (c2, h // 4, w // 4)
        self.fc = nn.Linear(spec.latent_dim, c2 * (h // 4) * (w // 4))
        self.deconv = nn.Sequential(
            nn.ReLU(),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),  # exact x2 upsampling
            nn.ReLU(),
            nn.ConvTranspose2d(c1, c, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.fc(z).reshape(z.shape[0], *self.grid)).flatten(1)


def build_encoder(spec: EncoderSpec) -> nn.Module:
    """f: (n, n_features) -> (n, latent_dim)."""
    if spec.kind == "mlp":
        return _mlp([spec.n_features, *spec.hidden, spec.latent_dim])
    return ConvEncoder(spec)


def build_decoder(spec: EncoderSpec) -> nn.Module:
    """g: (n, latent_dim) -> (n, n_features)."""
    if spec.kind == "mlp":
        return _mlp([spec.latent_dim, *reversed(spec.hidden), spec.n_features])
    return ConvDecoder(spec)


class Autoencoder(nn.Module):
    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        self.encoder = build_encoder(spec)
        self.decoder = build_decoder(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def encoder_from_artifact(artifact) -> nn.Module:
    """Rebuild the encoder of a DCAM ``ModelArtifact`` (architecture from
    meta['encoder'], weights from the tensors named 'encoder.*'); no pickle involved.
    The module maps standardised rows (n, n_features) float32 to latents (n, d_model)."""
    if "encoder" not in artifact.meta:
        raise ValueError("artifact has no meta['encoder']: not a DCAM model")
    spec = EncoderSpec.from_json(artifact.meta["encoder"])
    if spec.n_features != artifact.n_features or spec.latent_dim != artifact.d:
        raise ValueError(
            f"encoder maps {spec.n_features} -> {spec.latent_dim} but the artifact has "
            f"n_features={artifact.n_features} and prototypes of dimension {artifact.d}"
        )
    encoder = build_encoder(spec)
    prefix = "encoder."
    state = {
        n[len(prefix) :]: torch.from_numpy(v.copy())
        for n, v in artifact.tensors.items()
        if n.startswith(prefix)
    }
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"artifact encoder weights do not match meta['encoder']: {exc}") from exc
    return encoder.eval()


def encoder_tensors(model: nn.Module) -> dict:
    """Encoder weights as numpy arrays named 'encoder.<param>' (for ModelArtifact.tensors)."""
    return {
        f"encoder.{n}": t.detach().cpu().numpy().copy()
        for n, t in model.encoder.state_dict().items()
    }


# ---------------------------------------------------------------------------------------
# The joint model and its loss
# ---------------------------------------------------------------------------------------


def _latent_fill(z: torch.Tensor, fill: str) -> torch.Tensor:
    """Per-coordinate fill value of hidden latent coordinates, from the batch's own
    latents (detached): latent statistics move while the encoder trains, so data-set
    statistics computed once would go stale."""
    zd = z.detach()
    if fill == "mean":
        return zd.mean(0)
    if fill == "min":
        return zd.min(0).values
    if fill == "max":
        return zd.max(0).values
    if fill == "zero":
        return torch.zeros_like(zd[0])
    raise ValueError(f"fill must be mean/min/max/zero, got {fill!r}")


class DCAMModel(nn.Module):
    """Autoencoder + latent prototypes (an nn.Parameter) + AM hyper-parameters.

    ``forward(x, mask, phase)`` returns a dict of losses. Phase "pretrain" uses only the
    autoencoder (the prototypes get no gradient then).
    """

    def __init__(
        self,
        spec: EncoderSpec,
        prototypes: torch.Tensor | None = None,
        n_clusters: int | None = None,
        beta: float = 1.0,
        alpha: float = 0.1,
        steps: int = 10,
        metric: Metric = "euclidean",
        recon_weight: float = 1.0,
        fill: str = "mean",
    ):
        super().__init__()
        check_metric(metric)
        check_dynamics(beta, alpha, steps)
        if prototypes is None:
            if not n_clusters or n_clusters < 1:
                raise ValueError("DCAMModel needs prototypes or n_clusters >= 1")
            prototypes = torch.zeros(n_clusters, spec.latent_dim)
        if prototypes.shape[1:] != (spec.latent_dim,):
            raise ValueError(
                f"prototypes must be (k, {spec.latent_dim}), got {tuple(prototypes.shape)}"
            )
        self.autoencoder = Autoencoder(spec)
        self.prototypes = nn.Parameter(prototypes.detach().clone().float())
        self.beta, self.alpha, self.steps, self.metric = (
            float(beta),
            float(alpha),
            int(steps),
            metric,
        )
        self.recon_weight = float(recon_weight)
        self.fill = fill

    @property
    def encoder(self) -> nn.Module:
        return self.autoencoder.encoder

    @property
    def decoder(self) -> nn.Module:
        return self.autoencoder.decoder

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        phase: str = "joint",
        latent_fill: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
    ) -> dict:
        """``latent_fill`` overrides the batch's own fill of hidden latent coordinates (a
        distributed trainer passes the GLOBAL batch's, so N workers match one);
        ``latents`` is ``encoder(x)`` (with its graph) when the caller already has it."""
        z = self.encoder(x) if latents is None else latents
        recon = ((self.decoder(z) - x) ** 2).sum(dim=1).mean()
        if phase == "pretrain":
            return {"loss": recon, "recon": recon}
        if phase != "joint":
            raise ValueError(f"phase must be 'pretrain' or 'joint', got {phase!r}")
        if mask is None:
            z_t = am_evolve(z, self.prototypes, self.beta, self.alpha, self.steps, self.metric)
        else:
            fill = _latent_fill(z, self.fill) if latent_fill is None else latent_fill
            z0 = z * (1 - mask) + fill * mask
            z_t = am_evolve(
                z0, self.prototypes, self.beta, self.alpha, self.steps, self.metric, mask=mask
            )
        am = ((self.decoder(z_t) - x) ** 2).sum(dim=1).mean()
        return {"loss": am + self.recon_weight * recon, "am": am, "recon": recon}


def seeded_dcam_model(spec: EncoderSpec, seed: int, **kwargs) -> DCAMModel:
    """A DCAMModel whose layers are initialised from ``seed``. Layer initialisation draws
    from torch's global RNG: it is seeded locally, so the fit, the Tune trial and every
    distributed worker build the same weights without changing the caller's random
    state. ``kwargs`` go to DCAMModel."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return DCAMModel(spec, **kwargs)


def dcam_loss(
    model: nn.Module, x_batch: torch.Tensor, mask: torch.Tensor | None = None, phase: str = "joint"
) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss to backpropagate, float parts) for one batch. ``model`` is a DCAMModel (or any
    module with its forward); the mask (1 = hidden) is over LATENT coordinates (n, latent_dim),
    e.g. ``draw_mask(n, latent_dim, ratio, shared, generator)``."""
    parts = model(x_batch, mask, phase)
    return parts["loss"], {name: float(v.detach()) for name, v in parts.items()}


@torch.no_grad()
def encode(model: DCAMModel | Autoencoder, x: torch.Tensor) -> torch.Tensor:
    """Latents of many rows in chunks (eval mode)."""
    was_training = model.training
    model.eval()
    out = torch.cat(
        [model.encoder(x[r : r + EVAL_CHUNK]) for r in range(0, x.shape[0], EVAL_CHUNK)]
    )
    model.train(was_training)
    return out


@torch.no_grad()
def evaluate(model: DCAMModel, x: torch.Tensor, phase: str = "joint") -> dict[str, float]:
    """Full-data unmasked losses (row-weighted means over chunks)."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    for r in range(0, x.shape[0], EVAL_CHUNK):
        xb = x[r : r + EVAL_CHUNK]
        for name, v in model(xb, None, phase).items():
            sums[name] = sums.get(name, 0.0) + float(v) * xb.shape[0]
    model.train(was_training)
    return {name: s / x.shape[0] for name, s in sums.items()}


@torch.no_grad()
def evaluate_masked(model: DCAMModel, x: torch.Tensor, mask: torch.Tensor) -> float:
    """Full-data MASKED am term (eval mode): hidden latent coordinates (``mask``, 1 =
    hidden, shape (n, latent_dim)) filled from the latents of ALL of ``x`` (the model's
    fill kind), evolved, decoded; the row mean of the squared error. This is the joint
    phase's training criterion on fixed masks, which the reconstruction bound selects on:
    the unmasked am term rewards latents the dynamics do not move (a spread latent
    space), the masked one pattern completion, i.e. latents near their prototype."""
    was_training = model.training
    model.eval()
    z = torch.cat([model.encoder(x[r : r + EVAL_CHUNK]) for r in range(0, x.shape[0], EVAL_CHUNK)])
    fill = _latent_fill(z, model.fill)
    total = 0.0
    for r in range(0, x.shape[0], EVAL_CHUNK):
        zb, mb = z[r : r + EVAL_CHUNK], mask[r : r + EVAL_CHUNK]
        z0 = zb * (1 - mb) + fill * mb
        z_t = am_evolve(
            z0, model.prototypes, model.beta, model.alpha, model.steps, model.metric, mask=mb
        )
        total += float(((model.decoder(z_t) - x[r : r + EVAL_CHUNK]) ** 2).sum())
    model.train(was_training)
    return total / max(1, x.shape[0])


# ---------------------------------------------------------------------------------------
# In-memory training loop
# ---------------------------------------------------------------------------------------


@dataclass
class DCAMConfig:
    spec: EncoderSpec
    n_clusters: int = DEFAULTS.n_clusters
    beta: float | None = None  # None: beta_from_data on the pretrained latents
    alpha: float = 0.1
    steps: int = 10
    metric: Metric = "euclidean"
    mask: MaskSpec = field(default_factory=MaskSpec)
    masked: bool = True  # False: unmasked variant (every latent coordinate evolves)
    pretrain_epochs: int = DCAMSection.pretrain_epochs
    epochs: int = JOINT_EPOCHS
    batch_size: int = 64
    lr: float = DEFAULTS.lr
    recon_weight: float = DCAMSection.recon_weight
    recon_tolerance: float = DCAMSection.recon_tolerance
    recon_bound: str = DCAMSection.recon_bound
    # reduce-on-plateau per phase (x factor after ``patience`` epochs without improvement)
    plateau_factor: float = 0.8
    plateau_patience: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.n_clusters, int) or self.n_clusters < 1:
            raise ValueError(f"n_clusters must be an integer >= 1, got {self.n_clusters!r}")
        check_metric(self.metric)
        check_dynamics(1.0 if self.beta is None else self.beta, self.alpha, self.steps)
        if self.recon_bound not in RECON_BOUNDS:
            raise ValueError(f"recon_bound must be one of {RECON_BOUNDS}, got {self.recon_bound!r}")
        if not self.recon_tolerance >= 0:
            raise ValueError(f"recon_tolerance must be >= 0, got {self.recon_tolerance!r}")
        if self.pretrain_epochs < 0 or self.epochs < 0 or self.batch_size < 1:
            raise ValueError(
                f"need pretrain_epochs >= 0, epochs >= 0, batch_size >= 1; got "
                f"{self.pretrain_epochs}, {self.epochs}, {self.batch_size}"
            )
        if not self.lr > 0 or not self.recon_weight >= 0:
            raise ValueError(
                f"need lr > 0 and recon_weight >= 0, got {self.lr}, {self.recon_weight}"
            )


@dataclass
class DCAMFitResult:
    model: DCAMModel  # the selected state (eval mode)
    beta: float
    recon_pretrained: float  # full-data reconstruction loss after pretraining
    pretrain_history: list[float]  # mean batch reconstruction loss per pretraining epoch
    history: list[dict]  # per joint epoch (epoch -1 = start): am, recon, recon_ratio, within_bound
    best_epoch: int  # -1: the joint phase never beat its starting point within the bound
    stopped_early: bool


class DCAMTraining:
    """DCAM in memory on the distributed loop's own Trainer (``train/in_process.py``) and
    objective (``objective.py: DCAMObjective``): ``fit_dcam`` runs it to the end, the Tune
    trial epoch by epoch, so both train what `clam-dist train` trains on the same rows
    (masks from each row's id, batches in the lanes' plan; see ``train/memory_batches.py``).

    ``pretrain()`` runs the autoencoder epochs; ``start_joint()`` enters the joint phase
    (the objective's joint start: k-means on the pretrained latents of ``sample``, beta,
    the reference reconstruction loss, the start as the first candidate); ``joint_step()``
    trains one joint epoch, which the reconstruction bound then considers.
    """

    def __init__(
        self,
        x: torch.Tensor,
        config: DCAMConfig,
        sample: torch.Tensor | np.ndarray | None = None,
        beta_scale: float = 1.0,
    ) -> None:
        xs = np.ascontiguousarray(torch.as_tensor(x, dtype=torch.float32).numpy())
        # The in-memory fit uses every row for the joint start and the bound (a training
        # job: its initialisation sample).
        sample = xs if sample is None else np.asarray(sample, dtype=np.float32)
        n, d = xs.shape
        self.config = config
        cfg = fit_config("dcam", int(config.seed), _sections(config, len(sample)))
        # Placeholder prototypes and beta: the joint start sets them (hooks.initial_prototypes);
        # DCAM's fill is latent, computed per batch.
        placeholders = np.zeros((config.n_clusters, config.spec.latent_dim), np.float32)
        init = memory_init(placeholders, 1.0, n, fill=np.zeros(d, np.float32))
        self.trainer = InProcessTrainer(cfg, xs, init, sample=sample, row_chunk=row_chunk_for(n))
        self.objective = self.trainer.update.objective
        self.objective.beta_scale = float(beta_scale)
        self.joint_epochs = 0

    @property
    def pretrain_history(self) -> list[float]:
        """The pretraining epochs' losses (row-weighted mean batch reconstruction loss)."""
        return self.trainer.epoch_losses[: self.config.pretrain_epochs]

    @property
    def history(self) -> list[dict]:
        """Per joint epoch (epoch -1 = the start): am, recon, recon_ratio, within_bound."""
        return self.objective.history

    @property
    def best_epoch(self) -> int:
        return int(self.objective.best["epoch"])

    @property
    def selected_record(self) -> dict:
        return next(h for h in self.history if h["epoch"] == self.best_epoch)

    @property
    def stopped(self) -> bool:
        """True when recon_bound="stop" ended the joint phase beyond the bound."""
        return self.trainer.trainer.stopped

    def done(self) -> bool:
        return self.joint_epochs >= self.config.epochs or self.trainer.done()

    def pretrain(self) -> None:
        for _ in range(self.config.pretrain_epochs):
            self.trainer.run_epoch()

    def start_joint(self) -> float:
        """Enter the joint phase without training in it (the loop's ``begin_epoch`` of the
        first joint epoch, which ``run_epoch`` then finds begun); the beta it trains with."""
        self.trainer.trainer.begin_epoch()
        return self.objective.beta

    def joint_step(self) -> float | None:
        """One joint epoch; its training loss (None once the phase has ended)."""
        if self.done():
            return None
        metrics = self.trainer.run_epoch()
        self.joint_epochs += 1
        return metrics["epoch_loss"]

    def selected_model(self) -> DCAMModel:
        """A copy of the model in the selected state (eval mode); training goes on."""
        selected = copy.deepcopy(self.objective.module)
        selected.load_state_dict(self.objective.best["state"])
        return selected.eval()

    def result(self) -> DCAMFitResult:
        """The fit's result; the trainer's model is put in the selected state."""
        # The loop's finish did this when the run ended; not when epochs=0 ended it here.
        self.trainer.update.finalize()
        model = self.objective.module.eval()
        return DCAMFitResult(
            model,
            self.objective.beta,
            float(self.objective.recon_pretrained),
            list(self.pretrain_history),
            [dict(h) for h in self.history],
            self.best_epoch,
            self.stopped,
        )


def _sections(config: DCAMConfig, n_sample: int) -> dict[str, dict]:
    """DCAMConfig as the training job's config sections (``fit_config``)."""
    spec, mask = config.spec, config.mask
    return {
        "model": {
            "n_clusters": config.n_clusters,
            "beta": config.beta,
            "alpha": config.alpha,
            "steps": config.steps,
            "metric": config.metric,
            "mask_ratio": mask.ratio if config.masked else 0.0,
            "fill": mask.fill,
            "shared_every": mask.shared_every,
        },
        "optim": {
            "lr": config.lr,
            # optim.epochs counts joint epochs and is >= 1; with epochs=0 the fit stops at
            # the joint start (DCAMTraining.done) and the extra epoch never runs.
            "epochs": max(1, config.epochs),
            "batch_size": config.batch_size,
            "schedule": "plateau",
            "plateau_factor": config.plateau_factor,
            "plateau_patience": config.plateau_patience,
        },
        "dcam": {
            "encoder": spec.kind,
            "latent_dim": spec.latent_dim,
            "hidden": list(spec.hidden),
            "image_shape": None if spec.image_shape is None else list(spec.image_shape),
            "pretrain_epochs": config.pretrain_epochs,
            "recon_weight": config.recon_weight,
            "recon_tolerance": config.recon_tolerance,
            "recon_bound": config.recon_bound,
        },
        "data": {"init_sample": max(1, n_sample)},
    }


def fit_dcam(
    x: torch.Tensor, config: DCAMConfig, *, sample: torch.Tensor | np.ndarray | None = None
) -> DCAMFitResult:
    """Pretrain the autoencoder, initialise prototypes by k-means on the latents, train
    jointly, and return the selected state (see ``recon_bound``): the training job's loop
    and objective on the rows in memory. ``sample``: the rows of the joint start (k-means,
    beta, the reference reconstruction) and of the bound; default every row of ``x`` (a
    training job's is its initialisation sample, whose ORDER k-means++ also depends on)."""
    x = torch.as_tensor(x, dtype=torch.float32)
    n = x.shape[0]
    if x.ndim != 2 or x.shape[1] != config.spec.n_features:
        raise ValueError(f"x has shape {tuple(x.shape)}, expected (n, {config.spec.n_features})")
    if n < config.n_clusters:
        raise ValueError(f"n_samples={n} should be >= n_clusters={config.n_clusters}")
    training = DCAMTraining(x, config, sample)
    training.pretrain()
    training.start_joint()
    while training.joint_step() is not None:
        pass
    return training.result()


@torch.no_grad()
def dcam_assign(model: DCAMModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (n,) and latent squared distance to the assigned prototype: encode, then
    ClAM assignment (T AM steps, nearest prototype) in latent space."""
    z = encode(model, x)
    return assign(z, model.prototypes.detach(), model.beta, model.alpha, model.steps, model.metric)
