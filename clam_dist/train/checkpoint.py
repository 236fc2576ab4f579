"""Checkpoint files: tensors in safetensors, everything else in JSON; never pickle.

A checkpoint directory holds
- ``tensors.safetensors``: prototypes, k-means running counts, Lloyd partial sums, and the
  optimizer's per-parameter tensors (``optim.<param>.<name>``);
- ``state.json``: progress (epoch, step in epoch, global step), k and d, the run config,
  the initialisation (beta, scaler, fill), optimizer hyper-parameters and non-tensor
  state, the scheduler state, the epoch's partial sums and the metrics history.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

TENSORS = "tensors.safetensors"
STATE = "state.json"


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(tensors, JSON-able rest) of an optimizer state dict."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, pstate in sd["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_files(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save(directory: str, tensors: dict[str, torch.Tensor], state: dict) -> None:
    from safetensors.torch import save_file

    save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        os.path.join(directory, TENSORS),
    )
    Path(directory, STATE).write_text(json.dumps(state, default=float))


def load(directory: str) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    tensors_path, state_path = Path(directory, TENSORS), Path(directory, STATE)
    for p in (tensors_path, state_path):
        if not p.exists():
            raise ValueError(f"{directory} is not a clam-dist checkpoint: {p.name} missing")
    return load_file(str(tensors_path)), json.loads(state_path.read_text())


def read_state(checkpoint) -> dict:
    """state.json of a ray.train.Checkpoint (local or remote)."""
    with checkpoint.as_directory() as ckdir:
        path = Path(ckdir, STATE)
        if not path.exists():
            raise ValueError(f"{checkpoint.path} is not a clam-dist checkpoint: {STATE} missing")
        return json.loads(path.read_text())


def check_shape(state: dict, k: int, d: int) -> None:
    if (state["k"], state["d"]) != (k, d):
        raise ValueError(
            f"resume checkpoint has k={state['k']}, d={state['d']}; this run has k={k}, d={d}"
        )


def check_method(state: dict, method: str) -> None:
    """A checkpoint continues only the method that wrote it."""
    saved = state.get("method", state.get("config", {}).get("model", {}).get("method"))
    if saved is not None and saved != method:
        raise ValueError(
            f"resume checkpoint was written by model.method={saved!r}; this run has {method!r}"
        )


def open_checkpoint(path: str, storage_options: dict | None = None):
    """A ray.train.Checkpoint for a local path or a URL (s3://..., with storage_options,
    e.g. a custom endpoint)."""
    from ray.train import Checkpoint

    if "://" in path and not path.startswith("file://"):
        import pyarrow.fs as pafs

        from clam_dist.data.source import open_filesystem

        fs, inner = open_filesystem(path, storage_options)
        return Checkpoint(inner, filesystem=pafs.PyFileSystem(pafs.FSSpecHandler(fs)))
    return Checkpoint(path.removeprefix("file://"))
