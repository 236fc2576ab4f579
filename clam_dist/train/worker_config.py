"""What the driver hands every training worker: a typed config whose arrays (initial
prototypes, scaler, fill, DCAM's sample) travel through Ray's object store.

Python lists of floats in ``train_loop_config`` are pickled once per worker and cost
about 30 bytes per float (8.4M floats per worker at k=65,536, d=128); an object-store
reference is a few bytes and the workers on a node share one copy of the array.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from clam_dist.train.config import TrainConfig

# The initial state's vectors and the dtype each is computed in (the prototypes and the
# fill are float32 values, the scaler float64: converting loses nothing).
INIT_ARRAYS = {
    "prototypes": np.float32,
    "fill": np.float32,
    "mean": np.float64,
    "scale": np.float64,
}
_KEY = "loop"  # Ray calls the loop with a dict: our one entry in it


@dataclass(frozen=True)
class StepPlan:
    """Optimizer steps of every epoch (from the Parquet footers) and of the whole run."""

    steps_per_epoch: tuple[int, ...]
    total_steps: int

    @classmethod
    def from_dict(cls, plan: dict) -> StepPlan:
        return cls(tuple(int(s) for s in plan["steps_per_epoch"]), int(plan["total_steps"]))


@dataclass(frozen=True)
class LoopConfig:
    """The per-worker loop's input. ``init`` and ``sample`` are object-store references
    (``ray.ObjectRef``) to the initial state (a dict whose INIT_ARRAYS are numpy arrays)
    and to the standardised sample (None unless the method needs it on workers)."""

    train: TrainConfig
    plan: StepPlan
    run_url: str
    init: Any
    sample: Any = None

    def to_ray(self) -> dict:
        """The ``train_loop_config`` of TorchTrainer."""
        return {_KEY: self}

    @staticmethod
    def from_ray(config: dict) -> LoopConfig:
        return config[_KEY]

    def load_init(self, get: Callable[[Any], Any] | None = None) -> dict:
        return dict(_getter(get)(self.init))

    def load_sample(self, get: Callable[[Any], Any] | None = None) -> np.ndarray | None:
        if self.sample is None:
            return None
        # A writable copy: object-store arrays are read-only views, and torch warns on them.
        return np.array(_getter(get)(self.sample))


def init_arrays(init: dict) -> dict:
    """The initial state with its vectors as numpy arrays (lists become arrays)."""
    return {
        key: np.ascontiguousarray(value, dtype=INIT_ARRAYS[key]) if key in INIT_ARRAYS else value
        for key, value in init.items()
    }


def init_jsonable(init: dict) -> dict:
    """The initial state without its prototypes, fit for ``state.json``."""
    return {
        key: value.tolist() if isinstance(value, np.ndarray) else value
        for key, value in init.items()
        if key != "prototypes"
    }


def build_loop_config(
    cfg: TrainConfig,
    init: dict,
    plan: dict,
    run_url: str,
    sample: np.ndarray | None = None,
    put: Callable[[Any], Any] | None = None,
) -> LoopConfig:
    """Put the arrays in the object store (``put`` defaults to ray.put) and reference them."""
    if put is None:
        import ray

        put = ray.put
    return LoopConfig(
        train=cfg,
        plan=StepPlan.from_dict(plan),
        run_url=run_url,
        init=put(init_arrays(init)),
        sample=None if sample is None else put(np.ascontiguousarray(sample, np.float32)),
    )


def _getter(get: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    if get is not None:
        return get
    import ray

    return ray.get
