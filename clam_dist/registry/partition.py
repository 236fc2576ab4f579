"""One scheduled partition, start to end (`clam-dist run-partition`).

1. A partition that already ran is not run again: its recorded model version and
   committed assignments stand (same rows, same labels), and the command says so.
   ``reapply_champion`` assigns it with the current champion instead, explicitly.
2. The first partition of a name trains the first version on it and makes it champion.
3. Otherwise the partition is assigned with the champion (Ray Data, exactly once, into
   ``assignments/dt=<key>/model=v<NNNN>/``) and drift is measured on the committed rows.
   Drifted: a challenger is trained warm (clam_dist/registry/refresh.py) on a sample of
   the partition plus the reservoir, published, and gated on held-out rows of the
   partition; if it passes it becomes champion and the partition is assigned again with
   it. Every decision and its numbers go into ``partitions/<key>.json``.

Everything random is seeded by (config seed, partition key, parent version), never by the
clock or the order partitions run in, so a partition re-run against the same parent
trains the same challenger, and a backfill gives what the daily runs gave.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from clam_dist.artifacts import ModelArtifact
from clam_dist.config import to_dict
from clam_dist.data.source import VectorSource
from clam_dist.data.urls import absolute
from clam_dist.registry.config import PartitionConfig
from clam_dist.registry.store import ModelRegistry, RegistryError, check_partition_key
from clam_dist.secrets import persistable

FIRST_PARENT = 0  # the "parent version" a name's first version is seeded with


@dataclass
class PartitionRequest:
    registry: str
    name: str
    partition: str
    input: str
    reapply_champion: bool = False


def seed_for(base: int, key: str, parent: int) -> int:
    """The seed of everything a partition draws: a function of the config's seed, the
    partition key and the parent version only."""
    digest = hashlib.sha256(f"{base}|{key}|{parent}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def assignments_url(registry: ModelRegistry, key: str, version: int) -> str:
    return registry.url_of("assignments", f"dt={key}", f"model=v{version:04d}")


class PartitionRun:
    """The work of one partition (see the module doc); ``say`` gets one line per step."""

    def __init__(
        self, config: PartitionConfig, request: PartitionRequest, say: Callable[[str], None]
    ):
        self.config, self.request, self.say = config, request, say
        self.key = check_partition_key(request.partition)
        self.options = config.data.storage_options
        self.registry = ModelRegistry(request.registry, request.name, self.options)
        self.input_url = absolute(request.input.replace("{partition}", self.key))
        self.source = VectorSource.from_config(self.input_url, config.data)
        self.t0 = time.perf_counter()

    # -- the whole run ----------------------------------------------------------------

    def run(self) -> dict:
        """Check the input, take the name's lock, do the partition's work."""
        self.check_input()
        with self.locked():
            return self.run_locked()

    def check_input(self) -> None:
        self.source.dim()  # no files / mixed widths: refused before anything is written

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One partition of a name at a time: a refresh decides the next champion from the
        current one, so two partitions deciding at once would race. A second run is
        refused in one line naming the holder (exit 2); a dead holder's lock is taken
        over."""
        from clam_dist.pipeline.lock import RunDirBusy, run_dir_lock

        store = self.registry.store
        if store.is_local:
            store.local.mkdir(parents=True, exist_ok=True)
        lock, busy = run_dir_lock(store), False
        try:
            lock.__enter__()
        except RunDirBusy:
            busy = True
        if busy:  # raised here, not in the handler: the one line names the model
            holder = _json_or_empty(store.read_text(".lock"))
            raise RunDirBusy(
                f"model {self.request.name!r} in {self.request.registry} is busy: another "
                f"run-partition holds it (host {holder.get('host')}, pid {holder.get('pid')}, "
                f"since {holder.get('since')}); wait for it, or remove {store.url}/.lock "
                "only if that process is gone"
            )
        try:
            yield
        finally:
            lock.__exit__(None, None, None)

    def run_locked(self) -> dict:
        record = self.registry.read_partition(self.key)
        if record and record.get("status") == "done":
            if self.request.reapply_champion:
                return self._reapply(record)
            return self._rerun(record)
        champion = self.registry.alias("champion")
        if record and record.get("status") == "started":
            # An earlier attempt stopped half-way: the same parent, so the same seeds.
            champion = record.get("champion_before")
        if champion is None:
            return self._first()
        return self._scheduled(int(champion))

    # -- the first version of a name ------------------------------------------------

    def _first(self) -> dict:
        from clam_dist.registry.refresh import cluster_shares, train_first
        from clam_dist.registry.reservoir import write_sample

        seed = seed_for(self.config.seed, self.key, FIRST_PARENT)
        x_train, _ = self._sample(seed)
        k = self.config.model.n_clusters
        if k > len(x_train):
            raise RegistryError(
                f"model.n_clusters={k} is more than the {len(x_train)} rows sampled from "
                f"partition {self.key} ({self.input_url}); lower k or raise refresh.train_rows"
            )
        self._started(None)
        write_sample(self.registry.store, self.key, x_train[: self.config.refresh.reservoir_rows])
        self.say(f"partition {self.key}: no model named {self.request.name!r} yet: training v1")
        version = self._existing_version(FIRST_PARENT)
        if version is None:
            artifact = train_first(self.config, x_train, seed)
            card = self._card(
                None, artifact, x_train, [self.key], seed,
                id_mapping={"new": list(range(artifact.k)), "matched": {}, "retired": []},
                next_id=artifact.k, retired_ids=[],
                shares=cluster_shares(artifact, x_train),
                metrics={"final_loss": _last(artifact.meta.get("loss_history"))},
            )  # fmt: skip
            version = self.registry.publish(artifact, card)
        self.registry.set_alias(
            "champion", version, reason=f"first version, trained on {self.key}", partition=self.key
        )
        url, rows = self._assign(version)
        record = self._record(
            model_version=version, champion_before=None, assignments=url, rows=rows,
            drift=None, refreshed=False, promoted=True, first=True, gate=None,
            new_ids=self.registry.card(version)["id_mapping"]["new"], retired_ids=[],
            cluster_sizes=self._sizes(url, version)[0],
        )  # fmt: skip
        return self._done(record, f"v{version} trained on {self.key} and made champion")

    # -- a scheduled partition -----------------------------------------------------

    def _scheduled(self, parent: int) -> dict:
        from clam_dist.registry.drift import measure
        from clam_dist.registry.reservoir import write_sample

        seed = seed_for(self.config.seed, self.key, parent)
        self._started(parent)
        x_train, x_hold = self._sample(seed)
        write_sample(self.registry.store, self.key, x_train[: self.config.refresh.reservoir_rows])
        champion = self.registry.load(parent)
        url, rows = self._assign(parent)
        counts, above = self._sizes(url, parent)
        drift = measure(
            counts, above, self.registry.card(parent).get("cluster_shares", {}),
            self.config.drift, champion.meta.get("energy_p99"),
        )  # fmt: skip
        self.say(
            f"partition {self.key}: drift {drift['share']:.2%} of rows "
            f"(threshold {drift['threshold']:.2%}; energy above the champion's training p99 "
            f"{drift['energy_share_above']:.2%}, clusters that changed size "
            f"{drift['size_change_share']:.2%})"
        )
        fields = dict(
            model_version=parent, champion_before=parent, assignments=url, rows=rows,
            drift=drift, refreshed=False, promoted=False, gate=None, new_ids=[],
            retired_ids=[], cluster_sizes=counts,
        )  # fmt: skip
        if not drift["drifted"]:
            return self._done(self._record(**fields), f"no refresh; v{parent} stays champion")
        return self._refresh(parent, champion, x_train, x_hold, seed, fields)

    def _refresh(self, parent, champion, x_train, x_hold, seed, fields) -> dict:
        from clam_dist.registry.gate import decide
        from clam_dist.registry.refresh import RefreshUnsupported, cluster_shares, refresh
        from clam_dist.registry.reservoir import earlier_keys, read_samples

        store, settings = self.registry.store, self.config.refresh
        keys = earlier_keys(store, self.key, settings.reservoir_partitions)
        reservoir = read_samples(store, keys, champion.n_features)
        parent_card = self.registry.card(parent)
        version = self._existing_version(parent)
        if version is None:
            self.say(
                f"partition {self.key}: refreshing v{parent} warm on {len(x_train):,} rows of "
                f"the partition and {len(reservoir):,} reservoir rows of {len(keys)} earlier "
                "partitions"
            )
            try:
                new = refresh(
                    self.config, champion, x_train, reservoir,
                    int(parent_card.get("next_id", champion.k)), seed,
                )  # fmt: skip
            except RefreshUnsupported as exc:
                fields["refresh_skipped"] = str(exc)
                return self._done(self._record(**fields), f"refresh skipped: {exc}")
            retired = sorted(set(parent_card.get("retired_ids", [])) | set(new.mapping.retired))
            card = self._card(
                parent, new.artifact, x_train, [self.key, *keys], seed,
                id_mapping=new.mapping.to_card(), next_id=new.mapping.next_id,
                retired_ids=retired, shares=cluster_shares(new.artifact, x_train),
                metrics={
                    "warm_steps": new.fit.steps,
                    "final_loss": new.fit.losses[-1][1] if new.fit.losses else None,
                    "added_prototypes": new.added,
                    "unexplained_share": new.unexplained_share,
                    "reservoir_rows": int(len(reservoir)),
                },
            )  # fmt: skip
            version = self.registry.publish(new.artifact, card)
        card = self.registry.card(version)
        challenger = self.registry.load(version)
        self.registry.set_alias(
            "challenger", version, reason=f"refreshed on {self.key}", partition=self.key
        )
        gate = decide(champion, challenger, x_hold, self.config.gate, seed)
        card_ids = card["id_mapping"]
        fields.update(
            refreshed=True, challenger_version=version, gate=gate,
            new_ids=card_ids.get("new", []), retired_ids=card_ids.get("retired", []),
        )  # fmt: skip
        self.say(
            f"partition {self.key}: challenger v{version} ({challenger.k} clusters, "
            f"{len(card_ids.get('new', []))} new ids, {len(card_ids.get('retired', []))} "
            f"retired); gate {gate['metric']}: champion {gate['champion']:.4g}, challenger "
            f"{gate['challenger']:.4g} ({gate['rule']}): "
            + ("passed" if gate["passed"] else "refused")
        )
        if not gate["passed"] or self.config.gate.hold:
            why = "refused by the gate" if not gate["passed"] else "held (gate.hold)"
            return self._done(self._record(**fields), f"v{version} {why}; v{parent} stays")
        self.registry.set_alias(
            "champion", version, reason=f"passed the gate on {self.key}", partition=self.key,
            gate=gate,
        )  # fmt: skip
        url, rows = self._assign(version)
        fields.update(
            promoted=True, model_version=version, assignments=url, rows=rows,
            cluster_sizes=self._sizes(url, version)[0],
        )  # fmt: skip
        return self._done(self._record(**fields), f"v{version} promoted to champion")

    # -- partitions that already ran ----------------------------------------------

    def _rerun(self, record: dict) -> dict:
        from clam_dist.assign.commit import OutputPrefix

        version = int(record["model_version"])
        if OutputPrefix(record["assignments"], self.options).is_committed():
            champion = self.registry.alias("champion")
            hint = (
                ""
                if champion in (None, version)
                else f" (the champion is now v{champion}: --reapply-champion assigns it)"
            )
            self.say(
                f"partition {self.key} already ran with v{version}: its assignments stand, "
                f"nothing changed{hint}"
            )
            return self._summary(record, rerun=True)
        self.say(f"partition {self.key}: its recorded assignments are gone; assigning again")
        url, rows = self._assign(version)
        record = dict(record, assignments=url, rows=rows)
        self.registry.write_partition(self.key, record)
        return self._summary(record, rerun=True)

    def _reapply(self, record: dict) -> dict:
        champion = self.registry.alias("champion")
        if champion is None:
            raise RegistryError(f"{self.registry.url}: no champion to apply")
        if int(record["model_version"]) == champion:
            return self._rerun(record)
        url, rows = self._assign(champion)
        earlier = [*record.get("earlier", []), _without(record, "earlier")]
        new = dict(
            record, model_version=champion, assignments=url, rows=rows, earlier=earlier,
            reapplied=True, cluster_sizes=self._sizes(url, champion)[0],
        )  # fmt: skip
        return self._done(new, f"assigned with the current champion v{champion}")

    # -- helpers ------------------------------------------------------------------

    def _sample(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(training rows, held-out rows) of the partition: one uniform sample, split by
        a seeded permutation; the held-out rows are a fifth of it at most."""
        from clam_dist.data.stats import sample_rows

        settings = self.config
        want = settings.refresh.train_rows + settings.gate.holdout_rows
        x = sample_rows(self.source, want, seed).x
        order = np.random.default_rng(seed).permutation(len(x))
        hold = min(settings.gate.holdout_rows, len(x) // 5)
        return x[order[hold:]], x[order[:hold]]

    def _assign(self, version: int) -> tuple[str, int]:
        """Assign every row of the partition with ``version`` (exactly once: a committed
        output of that version is kept as it is)."""
        from clam_dist.assign.commit import OutputPrefix
        from clam_dist.assign.pipeline import AssignConfig, run_assignment
        from clam_dist.sections import OutputsSection, SourceColumns, values_of

        url = assignments_url(self.registry, self.key, version)
        prefix = OutputPrefix(url, self.options)
        if prefix.is_committed():
            rows = int(prefix.manifest()["rows"])
            self.say(f"partition {self.key}: v{version}'s assignments already committed")
            return url, rows
        result = run_assignment(
            AssignConfig(
                input=self.input_url,
                output=url,
                model=self.registry.artifact_url(version),
                **values_of(SourceColumns, self.config.data),
                **values_of(OutputsSection, self.config.assign),
            )
        )
        self.say(f"partition {self.key}: {result.rows:,} rows assigned with v{version} -> {url}")
        return url, result.rows

    def _sizes(self, url: str, version: int) -> tuple[dict[int, int], dict[int, int]]:
        from clam_dist.registry.drift import cluster_counts

        meta = self.registry.load(version).meta
        return cluster_counts(url, self.options, meta.get("energy_p99"))

    def _existing_version(self, parent: int) -> int | None:
        """A version an earlier attempt of this partition already published from
        ``parent`` (a retried run reuses it rather than publishing a twin)."""
        for version in self.registry.versions():
            made = self.registry.card(version).get("made_by") or {}
            if made.get("partition") == self.key and made.get("parent") == parent:
                return version
        return None

    def _card(self, parent, artifact: ModelArtifact, x_train, partitions, seed, **extra) -> dict:
        return {
            "name": self.request.name,
            "parent": parent,
            "method": artifact.method,
            "k": artifact.k,
            "partitions": partitions,
            "made_by": {"partition": self.key, "parent": parent or FIRST_PARENT, "seed": seed},
            "data": {
                "input": self.input_url,
                "files": len(self.source.files()),
                "rows": int(self.source.num_rows()),
                "train_rows": int(len(x_train)),
                "fingerprint": _fingerprint(self.source, x_train),
            },
            "config": persistable(to_dict(self.config)),
            "cluster_ids": list(artifact.meta["cluster_ids"]),
            "cluster_shares": extra.pop("shares"),
            **extra,
        }

    def _started(self, parent: int | None) -> None:
        self.registry.write_partition(
            self.key,
            {
                "partition": self.key,
                "status": "started",
                "champion_before": parent,
                "input": self.input_url,
                "started_at": _now(),
            },
        )

    def _record(self, **fields) -> dict:
        return {
            "partition": self.key,
            "status": "done",
            "name": self.request.name,
            "input": self.input_url,
            **fields,
            "cluster_sizes": {str(k): int(v) for k, v in fields["cluster_sizes"].items()},
            "finished_at": _now(),
            "seconds": round(time.perf_counter() - self.t0, 3),
        }

    def _done(self, record: dict, what: str) -> dict:
        self.registry.write_partition(self.key, record)
        self.say(f"partition {self.key}: {what}")
        return self._summary(record, rerun=False)

    def _summary(self, record: dict, rerun: bool) -> dict:
        drift = record.get("drift") or {}
        return {
            "registry": self.request.registry,
            "name": self.request.name,
            "partition": self.key,
            "input": self.input_url,
            "assignments": record["assignments"],
            "model_version": record["model_version"],
            "refreshed": bool(record.get("refreshed")) and not rerun,
            "promoted": bool(record.get("promoted")) and not rerun,
            "drift_share": drift.get("share"),
            "rerun": rerun,
            "rows": record.get("rows"),
            "drift": record.get("drift"),
            "gate": record.get("gate"),
            "challenger_version": record.get("challenger_version"),
            "new_ids": record.get("new_ids", []),
            "retired_ids": record.get("retired_ids", []),
            "champion": self.registry.alias("champion"),
            "seconds": round(time.perf_counter() - self.t0, 3),
            "recorded": record,
        }


def _fingerprint(source: VectorSource, x_train: np.ndarray) -> str:
    """What the version saw: the input's files and row count, and the sampled rows."""
    h = hashlib.sha256()
    h.update("\n".join(source.files()).encode())
    h.update(str(source.num_rows()).encode())
    h.update(np.ascontiguousarray(x_train).tobytes())
    return h.hexdigest()[:16]


def _json_or_empty(text: str | None) -> dict:
    import json

    try:
        value = json.loads(text or "")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _without(record: dict, key: str) -> dict:
    return {k: v for k, v in record.items() if k != key}


def _last(values) -> float | None:
    return values[-1] if values else None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run_partition(
    config: PartitionConfig, request: PartitionRequest, say: Callable[[str], None] = print
) -> dict:
    """Run one partition; the summary (``assignments``, ``model_version``, ``refreshed``,
    ``promoted``, ``drift_share`` and the decision's numbers)."""
    return PartitionRun(config, request, say).run()
