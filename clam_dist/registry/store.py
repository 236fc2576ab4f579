"""The model registry's storage: versions, cards, aliases and partition records of one
registered model, on a local folder or any fsspec URL (layout: clam_dist.registry).

Every record goes through one RunStore rooted at ``<registry>/<name>``, so each is written
whole or not at all. Two kinds of names are numbered and must never be taken twice, even
by two processes (or two machines) at once: a version (``vNNNN/claim.json``) and a change
of an alias (``aliases/history/NNNNNN.json``). Each is created exclusively (a conditional
PUT on object stores, a hard link on a local folder); whoever loses tries the next number.

A version is complete once its ``card.json`` exists (written last, after the artifact): a
publisher that died half-way leaves a claimed number without a card, which is skipped by
every reader and never reused. Versions and history records are never deleted.

An alias file (``aliases/<alias>.json``) is the latest history record of that alias,
copied: after writing it, a setter reads the history again and writes it once more until
what it wrote is the latest there is, so of two setters at once the later change wins.
"""

from __future__ import annotations

import json
import os
import re
import socket
from datetime import datetime, timezone

import numpy as np

from clam_dist.artifacts import META_FILE, ModelArtifact, load_artifact, save_artifact
from clam_dist.config import ConfigError
from clam_dist.data.source import normalize_storage_options
from clam_dist.data.urls import scheme_of
from clam_dist.pipeline.run_store import RunStore

MAX_KEY_LENGTH = 128
_KEY_RE = re.compile(r"[A-Za-z0-9._=-]+")
_VERSION_RE = re.compile(r"v(\d{4,})")
_HISTORY_RE = re.compile(r"(\d{6,})\.json")
CARD = "card.json"
CLAIM = "claim.json"
MODEL_DIR = "model"
ALIASES = "aliases"
HISTORY = "history"
PARTITIONS = "partitions"
# How many numbers one publish or alias change tries before giving up: each conflict means
# another writer took that number, so only that many writers at once exhaust it.
MAX_CLAIMS = 200
# Fields of a history record that ``set_alias``'s extras may not replace.
_RECORD_KEYS = ("seq", "alias", "version", "previous", "reason", "at")


class RegistryError(ConfigError):
    """A user-facing problem with the registry: an unknown name, version or alias, a bad
    key or name (exit code 2, one line, like every ConfigError)."""


def check_partition_key(key: str, what: str = "partition key") -> str:
    """``key`` when it can name ONE file or folder of the registry: not empty, only
    letters, digits and ``. _ = -``, not ``.`` or ``..``, at most 128 characters (so it
    can never climb out of its folder); otherwise a RegistryError naming it."""
    if not isinstance(key, str):
        raise RegistryError(f"{what} must be a string, got {type(key).__name__} {key!r}")
    problem = None
    if not key:
        problem = "it is empty"
    elif key in (".", ".."):
        problem = "'.' and '..' are not names"
    elif len(key) > MAX_KEY_LENGTH:
        problem = f"at most {MAX_KEY_LENGTH} characters, it has {len(key)}"
    elif not _KEY_RE.fullmatch(key):
        problem = "only letters, digits and . _ = - are allowed"
    if problem:
        raise RegistryError(f"{what} {key!r} is refused: {problem}")
    return key


def _check_version(version) -> int:
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
        raise RegistryError(f"a model version is a whole number from 1, got {version!r}")
    return int(version)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json_default(value):
    """numpy scalars and arrays (metrics often are) become JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} value {value!r} is not JSON-serialisable")


def _dumps(record: dict, what: str) -> str:
    """``record`` as JSON, checked before anything is written or claimed."""
    if not isinstance(record, dict):
        raise RegistryError(f"{what} must be a dict, got {type(record).__name__}")
    try:
        return json.dumps(record, indent=2, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"{what} is not JSON-serialisable: {exc}") from exc


def _storage(url: str, storage_options: dict | None) -> tuple[str, dict | None]:
    if not isinstance(url, str) or not url.strip():
        raise RegistryError(f"the registry must be a folder or URL, got {url!r}")
    scheme = scheme_of(url)
    if scheme in (None, "file"):
        return url, None
    return url, normalize_storage_options(scheme, storage_options)


class ModelRegistry:
    """One registered model, ``<url>/<name>`` (see the module docstring)."""

    def __init__(self, url: str, name: str, storage_options: dict | None = None):
        self.name = check_partition_key(name, "model name")
        url, options = _storage(url, storage_options)
        self.registry = RunStore(url, options).url
        self.store = RunStore(f"{self.registry}/{self.name}", options)
        self.url = self.store.url
        self.storage_options = self.store.storage_options

    def __repr__(self) -> str:
        return f"ModelRegistry({self.url!r})"

    def url_of(self, *parts: str) -> str:
        return self.store.url_of(*parts)

    # -- names and versions ---------------------------------------------------------------

    @staticmethod
    def names(url: str, storage_options: dict | None = None) -> list[str]:
        """Names registered under the registry ``url``: folders with a complete version."""
        url, options = _storage(url, storage_options)
        found = []
        for entry in RunStore(url, options).entries():
            try:
                check_partition_key(entry)
            except RegistryError:
                continue  # not a folder of ours
            if ModelRegistry(url, entry, options).versions():
                found.append(entry)
        return found

    def _claimed(self) -> list[int]:
        """Every version number taken, complete or not."""
        numbers = []
        for entry in self.store.entries():
            found = _VERSION_RE.fullmatch(entry)
            if found:
                numbers.append(int(found[1]))
        return sorted(numbers)

    @staticmethod
    def _folder(version: int) -> str:
        return f"v{version:04d}"

    def versions(self) -> list[int]:
        """Complete versions (their card exists), ascending."""
        return [v for v in self._claimed() if self.store.is_file(self._folder(v), CARD)]

    def latest(self) -> int | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def _unknown_version(self, version: int) -> RegistryError:
        versions = self.versions()
        there = ", ".join(map(str, versions)) if versions else "none yet"
        return RegistryError(
            f"model {self.name!r} has no version {version} in {self.registry} (versions: {there})"
        )

    def card(self, version: int) -> dict:
        version = _check_version(version)
        card = self.store.read_json(self._folder(version), CARD)
        if card is None:
            raise self._unknown_version(version)
        return card

    def artifact_url(self, version: int) -> str:
        return self.url_of(self._folder(_check_version(version)), MODEL_DIR)

    def artifact_meta(self, version: int) -> dict | None:
        """The artifact's own small ``model.json`` (method, k, d, ...), None if absent."""
        return self.store.read_json(self._folder(_check_version(version)), MODEL_DIR, META_FILE)

    def load(self, version: int) -> ModelArtifact:
        self.card(version)  # complete, or a RegistryError naming the versions there are
        return load_artifact(self.artifact_url(version), self.storage_options)

    def publish(self, artifact: ModelArtifact, card: dict) -> int:
        """Register ``artifact`` as the next version, with its card; returns its number.

        The number is claimed exclusively first (``vNNNN/claim.json``; on a conflict the
        next one), then the artifact is saved, then the card written last, with
        ``version``, ``created_at`` (UTC) and ``artifact`` (its URL) added."""
        _dumps(card, "a model card")  # a card that cannot be written costs no number
        claimed = self._claimed()
        version = (claimed[-1] if claimed else 0) + 1
        claim = {"host": socket.gethostname(), "pid": os.getpid()}
        for _ in range(MAX_CLAIMS):
            text = json.dumps(dict(claim, version=version, at=_now()))
            if self.store.create_exclusive(text, self._folder(version), CLAIM):
                break
            version += 1
        else:
            raise RuntimeError(
                f"{self.url}: no free version number after {MAX_CLAIMS} tries "
                f"(that many publishers at once?)"
            )
        url = self.artifact_url(version)
        save_artifact(artifact, url, self.storage_options)
        record = dict(card, version=version, created_at=_now(), artifact=url)
        self.store.write_text(_dumps(record, "a model card"), self._folder(version), CARD)
        return version

    # -- aliases --------------------------------------------------------------------------

    def alias(self, alias: str) -> int | None:
        """The version ``alias`` points at, None when it was never set."""
        record = self.store.read_json(ALIASES, f"{check_partition_key(alias, 'alias')}.json")
        return None if record is None else int(record["version"])

    def aliases(self) -> dict[str, int]:
        found = {}
        for entry in self.store.entries(ALIASES):
            if not entry.endswith(".json"):
                continue
            record = self.store.read_json(ALIASES, entry)
            if record is not None:
                found[entry[: -len(".json")]] = int(record["version"])
        return dict(sorted(found.items()))

    def _history_seqs(self) -> list[int]:
        seqs = []
        for entry in self.store.entries(ALIASES, HISTORY):
            found = _HISTORY_RE.fullmatch(entry)
            if found:
                seqs.append(int(found[1]))
        return sorted(seqs)

    def _record(self, seq: int) -> dict | None:
        return self.store.read_json(ALIASES, HISTORY, f"{seq:06d}.json")

    def _latest_of(self, alias: str, seqs: list[int]) -> dict | None:
        """The latest record among ``seqs`` that changed ``alias``."""
        for seq in reversed(seqs):
            record = self._record(seq)
            if record is not None and record.get("alias") == alias:
                return record
        return None

    def alias_history(self, alias: str | None = None) -> list[dict]:
        """Every change of every alias (or of ``alias``), in order."""
        if alias is not None:
            check_partition_key(alias, "alias")
        records = [self._record(seq) for seq in self._history_seqs()]
        return [r for r in records if r is not None and alias in (None, r.get("alias"))]

    def set_alias(self, alias: str, version: int, reason: str = "", **extra) -> dict:
        """Point ``alias`` at complete ``version``: a history record claimed exclusively
        under the next number (``previous`` is what the alias held before it), then the
        alias file. Returns the history record."""
        check_partition_key(alias, "alias")
        version = _check_version(version)
        self.card(version)  # complete, or a RegistryError naming the versions there are
        clash = sorted(set(extra) & set(_RECORD_KEYS))
        if clash:
            raise RegistryError(f"set_alias: {', '.join(clash)} cannot be given as extras")
        _dumps(extra, "the alias change's extras")
        for _ in range(MAX_CLAIMS):
            seqs = self._history_seqs()
            seq = (seqs[-1] if seqs else 0) + 1
            before = self._latest_of(alias, seqs)
            record = {
                "seq": seq,
                "alias": alias,
                "version": version,
                "previous": None if before is None else before.get("version"),
                "reason": reason,
                "at": _now(),
                **extra,
            }
            text = _dumps(record, "the alias change")
            if self.store.create_exclusive(text, ALIASES, HISTORY, f"{seq:06d}.json"):
                break
        else:
            raise RuntimeError(f"{self.url}: no free alias history number after {MAX_CLAIMS} tries")
        self._sync_alias(alias)
        return record

    def _sync_alias(self, alias: str) -> None:
        """Write the alias file from the latest record of ``alias``, until what was written
        is still the latest after writing it (a concurrent setter's change wins if later)."""
        written = None
        for _ in range(MAX_CLAIMS):
            latest = self._latest_of(alias, self._history_seqs())
            if latest is None or latest.get("seq") == written:
                return
            pointer = {k: latest.get(k) for k in ("alias", "version", "seq", "at")}
            self.store.write_text(_dumps(pointer, "the alias"), ALIASES, f"{alias}.json")
            written = latest.get("seq")

    def promote(
        self, version: int, alias: str = "champion", reason: str = "promoted by hand"
    ) -> dict:
        return self.set_alias(alias, version, reason, action="promote")

    def rollback(self, alias: str = "champion", reason: str = "rolled back by hand") -> dict:
        """Point ``alias`` back at the version it held before its latest change."""
        check_partition_key(alias, "alias")
        latest = self._latest_of(alias, self._history_seqs())
        if latest is None:
            raise RegistryError(
                f"alias {alias!r} of model {self.name!r} was never set: nothing to roll back"
            )
        previous = latest.get("previous")
        if previous is None:
            raise RegistryError(
                f"alias {alias!r} of model {self.name!r} held no version before its latest "
                f"change (history record {latest.get('seq')}, version {latest.get('version')}): "
                f"nothing to roll back to"
            )
        return self.set_alias(
            alias, int(previous), reason, action="rollback", rolled_back=latest.get("seq")
        )

    # -- partition records ----------------------------------------------------------------

    def read_partition(self, key: str) -> dict | None:
        return self.store.read_json(PARTITIONS, f"{check_partition_key(key)}.json")

    def write_partition(self, key: str, record: dict) -> None:
        """Whole or not at all (replaces an earlier record of the same key)."""
        check_partition_key(key)
        text = _dumps(record, f"the record of partition {key!r}")
        self.store.write_text(text, PARTITIONS, f"{key}.json")

    def partitions(self) -> list[str]:
        keys = []
        for entry in self.store.entries(PARTITIONS):
            if not entry.endswith(".json"):
                continue
            key = entry[: -len(".json")]
            try:
                keys.append(check_partition_key(key))
            except RegistryError:
                continue
        return sorted(keys)
