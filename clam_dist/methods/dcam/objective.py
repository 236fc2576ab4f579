"""DCAM's objective on the trainer: autoencoder pretraining, then the joint energy loss
with the reconstruction bound (phases, joint start and selection are DCAM's own).

A warm start (a scheduled refresh, ``hooks.Hooks.warm_fit``) passes the parent's
autoencoder weights as ``init["autoencoder"]`` ('encoder.*', and 'decoder.*' when the
parent carries them): the joint phase then starts from ``init``'s prototypes and beta (no
k-means), and the pretraining epochs, if any, refit only a decoder the parent lacks
(encoder and prototypes frozen, so the latent space the prototypes live in stays put)."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import torch

from clam_dist.methods.dcam.config import default_hidden
from clam_dist.methods.dcam.model import (
    EncoderSpec,
    encode,
    encoder_tensors,
    evaluate,
    evaluate_masked,
    seeded_dcam_model,
)
from clam_dist.models.clam import beta_from_data, draw_mask
from clam_dist.models.kmeans import kmeans_fit
from clam_dist.train.config import TrainConfig
from clam_dist.train.objectives import Collectives, Objective


class DCAMObjective(Objective):
    """Autoencoder + latent prototypes: pretraining on reconstruction, then the joint
    energy loss (decoded AM-evolved latent reconstructs the input, plus reconstruction)."""

    method = "dcam"

    def __init__(self, cfg: TrainConfig, init: dict, device: torch.device, sample: np.ndarray):
        super().__init__(cfg, init)
        m, dc = cfg.model, cfg.dcam
        self.spec = encoder_spec(cfg, len(init["mean"]))
        self.device = device
        # Every worker builds the same weights from the seed (verified at step 0).
        module = seeded_dcam_model(
            self.spec,
            cfg.run.seed,
            prototypes=torch.tensor(init["prototypes"], dtype=torch.float32),
            beta=self.beta,
            alpha=m.alpha,
            steps=m.steps,
            metric=m.metric,
            recon_weight=dc.recon_weight,
            fill=m.fill,
        )
        # A warm start: the parent's autoencoder over the seeded one (the same on every
        # worker); without its decoder, the pretraining epochs refit one.
        self.warm = init.get("autoencoder") is not None
        self.decoder_refit = self.warm and load_autoencoder(module, init["autoencoder"])
        self.module = module.to(device)
        self.sample = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32)).to(device)
        # The fixed latent masks of the selection criterion (the masked am term on the
        # sample; None when the joint phase trains unmasked): drawn from the run's seed.
        self.eval_mask = None
        if m.mask_ratio > 0:
            gen = torch.Generator().manual_seed(int(cfg.run.seed) + 7919)
            self.eval_mask = draw_mask(
                len(self.sample), self.spec.latent_dim, m.mask_ratio, False, gen
            ).to(device)
        self.joint_ready = False  # prototypes and beta set from the pretrained latents
        # (rows, their latents WITH the encoder's graph) of the current step: the monitor,
        # the global latent fill and the loss share one encoder pass per step.
        self._step_latents: tuple[torch.Tensor, torch.Tensor] | None = None
        self.recon_pretrained: float | None = None
        # beta = beta_scale x beta_from_data on the pretrained latents when model.beta is
        # None: 1 in a training job; a Tune trial sets its searched scale before the start.
        self.beta_scale = 1.0
        self.beta_default: float | None = None  # beta_from_data there (what Tune scales)
        self.best: dict | None = None  # {"epoch", "am", "score", "recon_ratio", "state"}
        # Per joint epoch (epoch -1 = the joint start): epoch, am, am_masked, score, recon,
        # recon_ratio, within_bound; what the in-memory fit reports as its history.
        self.history: list[dict] = []
        self._set_phase_grads("pretrain")

    # -- phases --------------------------------------------------------------------------

    def phase(self, epoch: int) -> str:
        return "pretrain" if epoch < self.cfg.dcam.pretrain_epochs else "joint"

    def monitoring(self) -> bool:
        return self.joint_ready

    def _set_phase_grads(self, phase: str) -> None:
        # Pretraining trains the autoencoder only: frozen prototypes get no gradient, so
        # they are neither in the all-reduce buffer nor touched by the optimizer.
        self.module.prototypes.requires_grad_(phase == "joint")
        if self.warm:
            # A warm start's pretraining refits the decoder only: the parent's encoder
            # (the latent space of the given prototypes) stays as it is until the joint phase.
            self.module.encoder.requires_grad_(phase == "joint")

    def begin_epoch(self, epoch: int, comm: Collectives, rank: int) -> bool:
        if self.phase(epoch) == "pretrain" or self.joint_ready:
            self._set_phase_grads(self.phase(epoch))
            return False
        self._start_joint(comm, rank)
        return True

    def _start_joint(self, comm: Collectives, rank: int) -> None:
        """k-means on the pretrained latents of the sample (a warm start: the given
        prototypes), beta from their scale, the reference reconstruction loss; computed
        on rank 0 and broadcast so every worker holds exactly the same values."""
        m = self.cfg.model
        k, latent = self.module.prototypes.shape
        packed = torch.zeros(k * latent + 3, dtype=torch.float32, device=self.device)
        if rank == 0:
            z = encode(self.module, self.sample)
            if self.warm:  # the parent's prototypes (plus any new ones), as given
                protos = self.module.prototypes.detach().clone()
            else:
                gen = torch.Generator().manual_seed(self.cfg.run.seed)
                protos = joint_start_centres(z.cpu(), k, gen, m.metric).to(self.device)
            default = float(beta_from_data(z.cpu(), protos.cpu(), m.metric))
            beta = m.beta if m.beta is not None else self.beta_scale * default
            recon = evaluate(self.module, self.sample, "pretrain")["recon"]
            packed = torch.cat(
                [
                    protos.reshape(-1).float(),
                    torch.tensor([beta, default, recon], device=self.device),
                ]
            )
        packed = comm.broadcast(packed, src=0)
        with torch.no_grad():
            self.module.prototypes.copy_(packed[: k * latent].reshape(k, latent))
        self.beta = float(packed[-3])
        self.beta_default = float(packed[-2])
        self.module.beta = self.beta
        self.recon_pretrained = float(packed[-1])
        self.joint_ready = True
        self._set_phase_grads("joint")
        # The start of the joint phase is itself a candidate (as in the in-memory fit).
        self.best, self.history = None, []
        self._consider(-1, *self._evaluate(comm, rank))

    # -- loss ----------------------------------------------------------------------------

    def mask_width(self, epoch: int) -> int | None:
        # Pretraining reconstructs the input: no pattern completion, no mask.
        if self.phase(epoch) == "pretrain" or self.cfg.model.mask_ratio <= 0:
            return None
        return self.spec.latent_dim

    def _latents(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output for this step's rows, computed once per step. With the
        graph: the monitor asks first (under no_grad), the loss backpropagates through it."""
        if self._step_latents is None or self._step_latents[0] is not x:
            with torch.enable_grad():
                self._step_latents = (x, self.module.encoder(x))
        return self._step_latents[1]

    def model_space(self, x: torch.Tensor) -> torch.Tensor:
        return self._latents(x).detach()

    def batch_context(self, x, mask, comm, epoch):
        if self.phase(epoch) == "pretrain" or mask is None:
            return None
        return self._global_latent_fill(x, comm)

    def mean_loss(self, x, mask, context, epoch):
        if self.phase(epoch) == "pretrain":
            return self.module(x, None, "pretrain")["loss"]
        z = self._latents(x)
        # The graph is this step's only; the values stay for the monitor, which runs
        # after the backward pass (while the gradient all-reduce is in flight).
        self._step_latents = (x, z.detach())
        return self.module(x, mask, "joint", latent_fill=context, latents=z)["loss"]

    def _global_latent_fill(self, x: torch.Tensor, comm: Collectives) -> torch.Tensor:
        """The fill of hidden latent coordinates from the GLOBAL batch's latents (not this
        worker's share), so N workers compute what one worker with the whole batch does."""
        latent = self.spec.latent_dim
        fill = self.cfg.model.fill
        if fill == "zero":
            return torch.zeros(latent, device=x.device)
        with torch.no_grad():
            z = self._latents(x).detach() if len(x) else torch.zeros(0, latent, device=x.device)
            if fill == "mean":
                sums = torch.cat([z.sum(0), torch.tensor([float(len(z))], device=x.device)])
                sums = comm.all_reduce(sums.double(), kind="step").float()
                return sums[:latent] / sums[latent].clamp_min(1.0)
            sign = 1.0 if fill == "max" else -1.0  # min = -max(-z)
            local = (sign * z).max(0).values if len(z) else torch.full((latent,), -math.inf)
            return sign * comm.all_reduce(local.to(x.device), "max", kind="step")

    # -- epoch ends: the reconstruction bound ---------------------------------------------

    def _evaluate(self, comm: Collectives, rank: int) -> tuple[float, float, float | None]:
        """(am, recon, am_masked) full-sample losses, from rank 0 to all; am_masked (the
        masked am term on the fixed masks ``eval_mask``) is None when training is unmasked."""
        out = torch.zeros(3, dtype=torch.float64, device=self.device)
        if rank == 0:
            ev = evaluate(self.module, self.sample, "joint")
            masked = (
                math.nan
                if self.eval_mask is None
                else evaluate_masked(self.module, self.sample, self.eval_mask)
            )
            out = torch.tensor(
                [ev["am"], ev["recon"], masked], dtype=torch.float64, device=self.device
            )
        am, recon, masked = comm.broadcast(out, src=0).tolist()
        return am, recon, (None if self.eval_mask is None else masked)

    def _consider(self, epoch: int, am: float, recon: float, am_masked: float | None) -> dict:
        """Record joint epoch ``epoch`` (-1: the start) and keep its state when its score
        is the lowest within the reconstruction bound (or the bound is off). The score is
        what the joint phase trains: the masked am term on fixed masks of the sample
        (``am_masked``) when training is masked, else the unmasked am term. The metrics
        returned go into the epoch's report (no "epoch" key: the loop's)."""
        score = am if am_masked is None else am_masked
        if not (math.isfinite(am) and math.isfinite(recon) and math.isfinite(score)):
            # Checked first: a non-finite state is never selected.
            raise FloatingPointError(
                f"DCAM loss became non-finite at joint epoch {epoch} (am={am}, recon={recon}, "
                f"am_masked={am_masked}); lower optim.lr or model.beta"
            )
        dc = self.cfg.dcam
        ratio = recon / self.recon_pretrained if self.recon_pretrained else math.inf
        within = recon <= (1.0 + dc.recon_tolerance) * self.recon_pretrained
        eligible = within or dc.recon_bound == "none"
        if eligible and (self.best is None or score < self.best["score"]):
            self.best = {
                "epoch": epoch,
                "am": am,
                "score": score,
                "recon_ratio": ratio,
                "state": copy.deepcopy(self.module.state_dict()),
            }
        metrics = {
            "am": am,
            **({} if am_masked is None else {"am_masked": am_masked}),
            "score": score,
            "recon": recon,
            "recon_ratio": ratio,
            "within_bound": within,
        }
        self.history.append({"epoch": epoch, **metrics})
        return metrics

    def end_epoch(self, epoch: int, comm: Collectives, rank: int) -> tuple[dict, bool]:
        if self.phase(epoch) == "pretrain":
            return {"phase": "pretrain"}, False
        joint_epoch = epoch - self.cfg.dcam.pretrain_epochs
        metrics = self._consider(joint_epoch, *self._evaluate(comm, rank))
        stop = self.cfg.dcam.recon_bound == "stop" and not metrics["within_bound"]
        metrics.update(phase="joint", selected_epoch=self.best["epoch"] if self.best else None)
        return metrics, stop

    def consider_epoch(self, epoch: int, epoch_loss: float, comparable: bool) -> None:
        """DCAM keeps its own selection: the best joint epoch within the reconstruction
        bound (end_epoch), not the lowest training loss."""

    def finalize(self) -> None:
        if self.best is not None:
            self.module.load_state_dict(self.best["state"])

    # -- checkpoint state ------------------------------------------------------------------

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = super().state_tensors()
        if self.best is not None:
            tensors.update({f"best.{n}": t for n, t in self.best["state"].items()})
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super().load_state_tensors(tensors)
        best = {n[len("best.") :]: t for n, t in tensors.items() if n.startswith("best.")}
        if best and self.best is not None:
            self.best["state"] = best

    def state(self) -> dict:
        best = None if self.best is None else {k: v for k, v in self.best.items() if k != "state"}
        return {
            "beta": self.beta,
            "beta_default": self.beta_default,
            "joint_ready": self.joint_ready,
            "recon_pretrained": self.recon_pretrained,
            "best": best,
            "history": [dict(h) for h in self.history],
        }

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.module.beta = self.beta
        self.joint_ready = bool(state.get("joint_ready", False))
        self.recon_pretrained = state.get("recon_pretrained")
        self.beta_default = state.get("beta_default")
        self.history = [dict(h) for h in state.get("history", [])]
        self.best = None if state.get("best") is None else dict(state["best"], state={})
        if self.best is not None:
            self.best.setdefault("score", self.best["am"])  # a checkpoint from before "score"
        self._set_phase_grads("joint" if self.joint_ready else "pretrain")

    # -- artifact --------------------------------------------------------------------------

    def artifact_fields(self) -> dict:
        m = self.cfg.model
        fields = {
            "beta": self.beta,
            "alpha": m.alpha,
            "steps": m.steps,
            "metric": m.metric,
            "tensors": encoder_tensors(self.module),
            "meta": {
                "encoder": self.spec.to_json(),
                "recon_pretrained": self.recon_pretrained,
                "recon_ratio": None if self.best is None else self.best["recon_ratio"],
                "selected_joint_epoch": None if self.best is None else self.best["epoch"],
            },
        }
        if self.warm:
            # A warm model keeps its decoder too, so the next refresh starts fully warm
            # (the predictor reads 'encoder.*' only).
            fields["tensors"].update(decoder_tensors(self.module))
            fields["meta"]["warm_start"] = {
                "decoder": "refit" if self.decoder_refit else "parent",
                "refit_epochs": self.cfg.dcam.pretrain_epochs,
            }
        return fields


def decoder_tensors(model: torch.nn.Module) -> dict:
    """Decoder weights as numpy arrays named 'decoder.<param>' (a warm artifact's)."""
    return {
        f"decoder.{n}": t.detach().cpu().numpy().copy()
        for n, t in model.decoder.state_dict().items()
    }


def load_autoencoder(module: torch.nn.Module, tensors: dict) -> bool:
    """Load a parent's 'encoder.*' weights (all of them) and 'decoder.*' weights (all or
    none) into ``module.autoencoder``; True when the decoder was absent (to be refitted)."""
    state = module.autoencoder.state_dict()
    given = {
        n: torch.from_numpy(np.array(v, dtype=np.float32))
        for n, v in tensors.items()
        if n.startswith(("encoder.", "decoder."))
    }
    has_decoder = any(n.startswith("decoder.") for n in given)
    expected = {n for n in state if has_decoder or n.startswith("encoder.")}
    if set(given) != expected:
        missing, extra = sorted(expected - set(given)), sorted(set(given) - expected)
        raise ValueError(
            f"the parent's autoencoder weights do not fit its meta['encoder']: missing "
            f"{missing}, unexpected {extra}"
        )
    for name, value in given.items():
        if tuple(value.shape) != tuple(state[name].shape):
            raise ValueError(
                f"the parent's {name} has shape {tuple(value.shape)}, its meta['encoder'] "
                f"builds {tuple(state[name].shape)}"
            )
    with torch.no_grad():
        module.autoencoder.load_state_dict(given, strict=False)
    return not has_decoder


def encoder_spec(cfg: TrainConfig, n_features: int):
    """The autoencoder architecture of a DCAM run (validated: image shapes must fit)."""
    dc = cfg.dcam
    hidden = dc.hidden or default_hidden(dc.encoder)
    try:
        return EncoderSpec(
            kind=dc.encoder,
            n_features=int(n_features),
            latent_dim=dc.latent_dim,
            hidden=tuple(hidden),
            image_shape=None if dc.image_shape is None else tuple(dc.image_shape),
        )
    except ValueError as exc:
        raise ValueError(f"dcam: {exc}") from exc


# k-means restarts of the joint start (plain Lloyd, as ClAM's initialisation): one
# k-means++ seeding can merge two clusters of the pretrained latents (measured: 1 seed in
# 7 of tests/test_dcam.py's blobs, NMI 0.62 instead of 1.0), and the joint epochs rarely
# split them again.
JOINT_START_RESTARTS = 10


def joint_start_centres(
    z: torch.Tensor, k: int, generator: torch.Generator, metric: str
) -> torch.Tensor:
    """The prototypes the joint phase starts from: the lowest-inertia of
    JOINT_START_RESTARTS k-means++ + Lloyd runs on the sample's pretrained latents."""
    with warnings.catch_warnings():
        # Few latent rows per centroid are normal on a small sample; no k-means warning.
        warnings.simplefilter("ignore", UserWarning)
        result = kmeans_fit(
            z, k, n_init=JOINT_START_RESTARTS, max_iter=100, swap_rounds=0,
            generator=generator, metric=metric,
        )  # fmt: skip
    return result.centers
