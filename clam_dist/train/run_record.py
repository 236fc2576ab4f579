"""The run folder's record of what it trains, so a changed config is never silently resumed.

Ray Train v2 restores any run whose folder ``<storage_path>/<run.name>`` holds checkpoints.
Re-running ``clam-dist train`` with the default run.name but another config (data, k,
learning rate, method, ...) then resumed the OLD run: a shape error deep in a worker, or a
"trained" model in seconds that saw other data. The driver therefore writes the run's
training identity to ``<storage>/<name>/run-config.json`` and refuses, before any work, a
config whose identity differs. A retry of the same command (after a crash, by
``ray job submit``, or Ray Train's own FailureConfig restarts, which never reach the
driver) has the same identity and resumes as before. Nothing is ever deleted or replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from clam_dist import methods
from clam_dist.config import to_dict
from clam_dist.secrets import persistable
from clam_dist.train.checkpoint import STATE
from clam_dist.train.config import TrainConfig

RECORD = "run-config.json"

# Fields that may change between a crashed attempt and its retry without changing what is
# trained; they are left out of the identity, so such a retry still resumes.
NOT_IDENTITY = frozenset(
    {
        "run.name",  # with storage_path: WHERE the folder is, never what it holds (a moved
        "run.storage_path",  # or copied folder, a symlinked path, still resume)
        "run.max_failures",  # how often Ray restarts workers: raised for a flaky retry
        "run.tensorboard_dir",  # where the driver's metrics view goes
        "run.report_every",  # how often metrics are reported, not what is computed
        "run.verify_every",  # a cross-worker check of the prototypes; changes no value
        "run.barrier_timing",  # timing instrumentation only
        "storage.shared",  # the user's word that a folder is shared: where, not what
        "run.fail_at_epoch",  # failure injection: set for the crash, unset for the retry
        "run.fail_at_step",  # ditto
        "run.checkpoint_every",  # how often progress is saved; a resume continues exactly
        "run.checkpoint_every_steps",  # ditto
        "data.storage_options",  # how to reach the store (credentials rotate, endpoints move)
        "data.read_threads",  # decode parallelism; the rows and their order are the same
    }
)


def identity(cfg: TrainConfig) -> dict[str, Any]:
    """The run's training identity: ``section.field -> value``, without credentials
    (``persistable``: this goes to disk) and without the fields in NOT_IDENTITY."""
    return _identity(_flatten(persistable(to_dict(cfg))))


def check(cfg: TrainConfig, run_url: str) -> None:
    """Raise ValueError when ``<run_url>/<run.name>`` holds a run of another config (by its
    record, or for a folder of an older clam-dist without one, by its newest checkpoint).
    Reads only: called before any work, so a refused run costs nothing."""
    _Folder(cfg, run_url).check(identity(cfg))


def record(cfg: TrainConfig, run_url: str) -> None:
    """``check``, then write the record when the folder has none yet. Called once every
    fail-fast check has passed, so a config refused by those leaves no record that would
    refuse its corrected re-run."""
    folder = _Folder(cfg, run_url)
    ident = identity(cfg)
    if not folder.check(ident):  # no record yet (a new folder, or an older clam-dist's)
        folder.write(RECORD, json.dumps({"identity": ident}, indent=2, sort_keys=True))


class _Folder:
    """A run folder on the local disk or a remote fsspec store (as ``trainer.storage``:
    ``run_url`` is an absolute local path or a URL with a scheme)."""

    def __init__(self, cfg: TrainConfig, run_url: str):
        self.url = f"{run_url.rstrip('/')}/{cfg.run.name}"
        self.remote = "://" in run_url
        if self.remote:
            from clam_dist.data.source import open_filesystem

            self.fs, self.path = open_filesystem(self.url, cfg.data.storage_options)
            self.fs.invalidate_cache(self.path)  # listings cached by an earlier call
        else:
            import fsspec

            self.fs, self.path = fsspec.filesystem("file"), self.url

    def check(self, new: dict[str, Any]) -> bool:
        """Whether the folder has a record; raises if its run's identity differs."""
        text = self.read(RECORD)
        if text is not None:
            try:
                old = _identity(json.loads(text)["identity"])
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise self.unknown(f"its {RECORD} is unreadable ({exc})") from exc
            self.compare(old, new, f"its {RECORD}")
            return True
        # An older clam-dist wrote no record: the newest checkpoint carries the config
        # (clam_dist.train.loop saves persistable(to_dict(cfg)) in its state.json).
        checkpoints = self.checkpoints()
        if not checkpoints:
            return False
        newest = checkpoints[-1]  # checkpoint_<date>_<time>: names sort by time
        try:
            old = _identity(_flatten(json.loads(self.read(f"{newest}/{STATE}") or "")["config"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise self.unknown(f"{newest}/{STATE} has no readable config ({exc})") from exc
        self.compare(old, new, f"{newest}/{STATE}")
        return False

    def compare(self, old: dict[str, Any], new: dict[str, Any], source: str) -> None:
        # A field the recorded run's clam-dist did not have yet trained as its default; a
        # field this version no longer has cannot be honoured, so it is not compared.
        # Every section's defaults, the other methods' too (an attention run compares
        # attention.* even though the default config trains another method).
        defaults = _flatten(persistable(to_dict(TrainConfig())))
        diff = [
            f"{k}: {_show(old.get(k, defaults.get(k)))} -> {_show(v)}"
            for k, v in sorted(new.items())
            if old.get(k, defaults.get(k)) != v
        ]
        if not diff:
            return
        shown = ", ".join(diff[:5]) + (f", and {len(diff) - 5} more" if len(diff) > 5 else "")
        raise ValueError(
            f"run folder {self.url} holds a training run of another config ({source}: "
            f"{shown}); Ray Train would resume that run instead of training this config. "
            "Choose another --set run.name=... or another run.storage_path (the folder is "
            "left as it is)"
        )

    def unknown(self, why: str) -> ValueError:
        return ValueError(
            f"run folder {self.url} holds a training run of unknown config: {why}; Ray Train "
            "would resume it. Choose another --set run.name=... or another run.storage_path "
            "(the folder is left as it is)"
        )

    def read(self, name: str) -> str | None:
        try:
            return self.fs.cat_file(f"{self.path}/{name}").decode()
        except FileNotFoundError:
            return None

    def checkpoints(self) -> list[str]:
        """Names of the Ray Train checkpoint folders, oldest first."""
        try:
            entries = self.fs.ls(self.path, detail=True)
        except FileNotFoundError:
            return []
        names = (
            os.path.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "directory"
        )
        return sorted(n for n in names if n.startswith("checkpoint_"))

    def write(self, name: str, text: str) -> None:
        if self.remote:  # one object PUT: whole or absent
            self.fs.pipe_file(f"{self.path}/{name}", text.encode())
            return
        os.makedirs(self.path, exist_ok=True)  # Ray Train creates it later otherwise
        tmp = os.path.join(self.path, f".{name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, os.path.join(self.path, name))  # atomic: whole or absent
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _flatten(config: dict) -> dict[str, Any]:
    """``{"model": {"n_clusters": 8}}`` -> ``{"model.n_clusters": 8}`` (one level: a
    field's value, a list or storage_options' dict, is compared whole)."""
    return {f"{s}.{k}": v for s, fields in config.items() for k, v in fields.items()}


def _identity(flat: dict[str, Any]) -> dict[str, Any]:
    """``flat`` without NOT_IDENTITY and without the sections of methods other than the
    run's (dcam.* changes nothing a clam run trains). Applied to recorded identities too,
    so a field a later version excludes never refuses an older folder."""
    method = flat.get("model.method")
    owned = set(methods.sections())  # each section is named after its method
    dropped = owned - {method}
    return {
        k: v for k, v in flat.items() if k not in NOT_IDENTITY and k.split(".", 1)[0] not in dropped
    }


def _show(value: Any) -> str:
    """A value for the one-line message; a long one keeps both ends (paths differ at the end)."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else f"{text[:38]}...{text[-39:]}"
