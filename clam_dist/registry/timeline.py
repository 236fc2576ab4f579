"""The timeline of one registered model across its partitions, and its report.

``build_timeline`` turns the records of a model name (``partitions/<key>.json``, the
version cards, the alias history) into one JSON-able dict; ``render_timeline`` writes it
to a local folder as ``timeline.json``, ``timeline.png`` (drift share per partition with
the threshold and the refresh/promotion days; cluster sizes per partition, stacked) and
``timeline.html`` (self-contained: the PNG embedded, tables of partitions, champions,
versions and the alias history). Pure functions: no storage, no Ray.

Records come from users' runs over months: every optional key may be missing or null,
and is shown as "n/a" rather than failing the report. Every string put into the HTML is
escaped (partition keys and reasons are user text).
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np

# The size panel shows this many clusters (largest over the whole history) and "other".
TOP_CLUSTERS = 20
# At most this many partition labels on an x axis; the others are skipped evenly.
MAX_X_LABELS = 40
NA = "n/a"


# ---------------------------------------------------------------------------- building


def build_timeline(
    partitions: list[dict],
    cards: dict[int, dict],
    alias_history: list[dict],
    name: str | None = None,
) -> dict:
    """One model's history as a JSON-able dict (keys: name, partitions, cluster_ids,
    sizes, champions, refreshes, versions, alias_history); see the module docstring.

    ``partitions`` are ordered by partition key (records without one go last, in their
    given order). ``champion`` of a partition is the version that was champion when it
    ran (``champion_before``; the partition's own ``model_version`` for the first one).
    ``champions`` are the intervals of partitions each champion served, from the
    partition that promoted it to the one before the next promotion (``current``: still
    champion after the last partition). ``sizes`` maps partition -> {cluster id (str, as
    in JSON): rows}; ``cluster_ids`` is every id seen in any partition, sorted."""
    records = [p for p in (partitions or []) if isinstance(p, dict)]
    order = sorted(
        range(len(records)),
        key=lambda i: (records[i].get("partition") is None, str(records[i].get("partition")), i),
    )
    entries: list[dict] = []
    sizes: dict[str, dict[str, int]] = {}
    ids_seen: set = set()
    refreshes: list[dict] = []
    for i in order:
        rec = records[i]
        entry = _partition_entry(rec)
        entries.append(entry)
        key = entry["partition"]
        part_sizes = _sizes(rec.get("cluster_sizes"))
        if key is not None:
            sizes[key] = {str(k): v for k, v in part_sizes.items()}
        ids_seen.update(part_sizes)
        ids_seen.update(entry["new_ids"])
        ids_seen.update(entry["retired_ids"])
        if entry["refreshed"]:
            refreshes.append(_refresh_entry(entry))
    return {
        "name": name,
        "partitions": entries,
        "cluster_ids": sorted(ids_seen, key=_id_order),
        "sizes": sizes,
        "champions": _champion_intervals(entries),
        "refreshes": refreshes,
        "versions": _versions(cards),
        "alias_history": _alias_history(alias_history),
    }


def _partition_entry(rec: dict) -> dict:
    drift = rec.get("drift") if isinstance(rec.get("drift"), dict) else {}
    gate = rec.get("gate") if isinstance(rec.get("gate"), dict) else None
    model_version = _int(rec.get("model_version"))
    champion_before = _int(rec.get("champion_before"))
    key = rec.get("partition")
    return {
        "partition": None if key is None else str(key),
        "status": _str(rec.get("status")),
        "rows": _int(rec.get("rows")),
        "drift_share": _num(drift.get("share")),
        "drift_threshold": _num(drift.get("threshold")),
        "drifted": _bool(drift.get("drifted")),
        "energy_share_above": _num(drift.get("energy_share_above")),
        "size_change_share": _num(drift.get("size_change_share")),
        "model_version": model_version,
        "champion": champion_before if champion_before is not None else model_version,
        "refreshed": bool(_bool(rec.get("refreshed"))),
        "challenger_version": _int(rec.get("challenger_version")),
        "promoted": bool(_bool(rec.get("promoted"))),
        "gate": None if gate is None else _gate(gate),
        "new_ids": _ids(rec.get("new_ids")),
        "retired_ids": _ids(rec.get("retired_ids")),
        "assignments": _str(rec.get("assignments")),
        "finished_at": _str(rec.get("finished_at")),
    }


def _gate(gate: dict) -> dict:
    return {
        "metric": _str(gate.get("metric")),
        "champion": _num(gate.get("champion")),
        "challenger": _num(gate.get("challenger")),
        "margin": _num(gate.get("margin")),
        "passed": _bool(gate.get("passed")),
    }


def _refresh_entry(entry: dict) -> dict:
    gate = entry["gate"] or {}
    return {
        "partition": entry["partition"],
        "champion_version": entry["champion"],
        "challenger_version": entry["challenger_version"],
        "promoted": entry["promoted"],
        "drift_share": entry["drift_share"],
        "metric": gate.get("metric"),
        "champion_score": gate.get("champion"),
        "challenger_score": gate.get("challenger"),
        "margin": gate.get("margin"),
        "passed": gate.get("passed"),
    }


def _champion_after(entry: dict, previous: int | None) -> int | None:
    """The champion once this partition finished: the promoted version on a promotion
    day, else the version the partition ran with (else the one before it)."""
    if entry["promoted"]:
        for v in (entry["challenger_version"], entry["model_version"]):
            if v is not None:
                return v
    if not entry["refreshed"] and entry["model_version"] is not None:
        return entry["model_version"]
    if entry["champion"] is not None:
        return entry["champion"]
    return previous


def _champion_intervals(entries: list[dict]) -> list[dict]:
    intervals: list[dict] = []
    current: int | None = None
    for entry in entries:
        after = _champion_after(entry, current)
        if after is None:
            continue
        if after != current or not intervals:
            intervals.append(
                {"version": after, "from_partition": entry["partition"], "to_partition": None}
            )
            current = after
        intervals[-1]["to_partition"] = entry["partition"]
    for i, item in enumerate(intervals):
        item["current"] = i == len(intervals) - 1
    return intervals


def _versions(cards) -> list[dict]:
    out = []
    for key, card in (cards or {}).items():
        if not isinstance(card, dict):
            continue
        version = _int(card.get("version"))
        version = version if version is not None else _int(key)
        mapping = card.get("id_mapping") if isinstance(card.get("id_mapping"), dict) else {}
        matched = mapping.get("matched")
        trained_on = card.get("partitions")
        metrics = card.get("metrics")
        out.append(
            {
                "version": version,
                "parent": _int(card.get("parent")),
                "created_at": _str(card.get("created_at")),
                "partitions": [str(p) for p in trained_on] if isinstance(trained_on, list) else [],
                "metrics": _jsonable(metrics) if isinstance(metrics, dict) else {},
                "matched_ids": len(matched) if isinstance(matched, dict) else None,
                "new_ids": _ids(mapping.get("new")),
                "retired_ids": _ids(mapping.get("retired")),
            }
        )
    out.sort(key=lambda v: (v["version"] is None, v["version"] or 0))
    return out


def _alias_history(history) -> list[dict]:
    rows = [
        {
            "seq": _int(h.get("seq")),
            "alias": _str(h.get("alias")),
            "version": _int(h.get("version")),
            "previous": _int(h.get("previous")),
            "reason": _str(h.get("reason")),
            "at": _str(h.get("at")),
        }
        for h in (history or [])
        if isinstance(h, dict)
    ]
    # Stable: rows without a seq keep their given place after the numbered ones.
    return sorted(rows, key=lambda h: (h["seq"] is None, h["seq"] or 0))


# ---------------------------------------------------------------------------- coercion


def _num(v) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _int(v) -> int | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) and f == int(f) else None


def _bool(v) -> bool | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v)


def _str(v) -> str | None:
    return None if v is None else str(v)


def _cluster_id(v):
    """A cluster id as an int where it is one ("64" -> 64), else its string."""
    i = _int(v)
    return i if i is not None else str(v)


def _id_order(v):
    return (0, v, "") if isinstance(v, int) else (1, 0, str(v))


def _ids(v) -> list:
    if not isinstance(v, (list, tuple)):
        return []
    return sorted({_cluster_id(x) for x in v if x is not None}, key=_id_order)


def _sizes(v) -> dict:
    if isinstance(v, (list, tuple)):
        v = dict(enumerate(v))
    if not isinstance(v, dict):
        return {}
    out = {}
    for k, n in v.items():
        rows = _int(n)
        if rows is not None:
            out[_cluster_id(k)] = rows
    return dict(sorted(out.items(), key=lambda kv: _id_order(kv[0])))


def _jsonable(value):
    """NaN/inf become null (strict JSON), numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------- rendering


def render_timeline(timeline: dict, out_dir: str | Path, title: str = "") -> dict[str, str]:
    """Write ``timeline.json``, ``timeline.png`` and ``timeline.html`` into the local
    folder ``out_dir`` (created if missing; these three files are replaced, nothing else
    is touched). Returns {"json": path, "png": path, "html": path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = title or f"Timeline of {timeline.get('name') or 'a registered model'}"
    paths = {
        "json": out / "timeline.json",
        "png": out / "timeline.png",
        "html": out / "timeline.html",
    }
    _write(paths["json"], json.dumps(_jsonable(timeline), indent=2, sort_keys=True).encode())
    _plot_timeline(timeline, paths["png"], title)
    page = _html_page(timeline, title, paths["png"].read_bytes())
    _write(paths["html"], page.encode("utf-8"))
    return {k: str(p) for k, p in paths.items()}


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _labels(entries: list[dict]) -> list[str]:
    return [e.get("partition") or NA for e in entries]


def _set_x_labels(ax, labels: list[str]) -> None:
    step = max(1, math.ceil(len(labels) / MAX_X_LABELS))
    ticks = np.arange(0, len(labels), step)
    ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=30, ha="right", fontsize=8)


def _top_ids(timeline: dict, entries: list[dict]) -> tuple[list[str], bool]:
    totals: dict[str, int] = {}
    for e in entries:
        for cid, rows in (timeline.get("sizes") or {}).get(e.get("partition"), {}).items():
            totals[str(cid)] = totals.get(str(cid), 0) + int(rows or 0)
    ranked = sorted(totals, key=lambda c: (-totals[c], _id_order(_cluster_id(c))))
    return ranked[:TOP_CLUSTERS], len(ranked) > TOP_CLUSTERS


def _plot_timeline(timeline: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [e for e in timeline.get("partitions") or [] if isinstance(e, dict)]
    labels = _labels(entries)
    n = len(entries)
    x = np.arange(n)
    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(max(7.0, min(24.0, 0.45 * n + 4)), 8), sharex=True
    )
    fig.suptitle(title)

    # Drift share per partition, with the threshold and the refresh/promotion days.
    shares = [e.get("drift_share") for e in entries]
    heights = [s if s is not None else 0.0 for s in shares]
    colors = ["#cc6677" if e.get("drifted") else "#4477aa" for e in entries]
    ax1.bar(x, heights, color=colors, width=0.8)
    for i, s in enumerate(shares):
        if s is None:
            ax1.text(i, 0, NA, ha="center", va="bottom", fontsize=7, color="#777777")
    thresholds = [e.get("drift_threshold") for e in entries]
    if any(t is not None for t in thresholds):
        ax1.step(
            x,
            [t if t is not None else np.nan for t in thresholds],
            where="mid",
            color="#444444",
            linestyle="--",
            label="drift threshold",
        )
    top = max(heights + [t or 0.0 for t in thresholds] + [0.01])
    refreshed = [i for i, e in enumerate(entries) if e.get("refreshed")]
    promoted = [i for i, e in enumerate(entries) if e.get("promoted")]
    if refreshed:
        ax1.scatter(
            refreshed, [top * 1.08] * len(refreshed), marker="v", color="#ee7733", label="refreshed"
        )
    if promoted:
        ax1.scatter(
            promoted,
            [top * 1.18] * len(promoted),
            marker="*",
            s=80,
            color="#228833",
            label="promoted",
        )
    ax1.set_ylim(0, top * 1.3)
    ax1.set(ylabel="drift share", title="Drift per partition (red: drifted)")
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)

    # Cluster sizes per partition, stacked: the largest clusters and "other".
    top_ids, has_other = _top_ids(timeline, entries)
    sizes = timeline.get("sizes") or {}
    bottom = np.zeros(n)
    cmap = plt.get_cmap("tab20")
    series = [(cid, f"cluster {cid}") for cid in top_ids]
    for j, (cid, label) in enumerate(series):
        vals = np.array(
            [float((sizes.get(e.get("partition")) or {}).get(cid) or 0) for e in entries]
        )
        ax2.bar(x, vals, bottom=bottom, color=cmap(j % 20), width=0.8, label=label)
        bottom += vals
    if has_other:
        keep = set(top_ids)
        vals = np.array(
            [
                float(
                    sum(
                        int(r or 0)
                        for c, r in (sizes.get(e.get("partition")) or {}).items()
                        if str(c) not in keep
                    )
                )
                for e in entries
            ]
        )
        ax2.bar(x, vals, bottom=bottom, color="#bbbbbb", width=0.8, label="other")
        bottom += vals
    if n and bottom.max() > 0:
        ax2.set_ylim(0, bottom.max() * 1.05)
    ax2.set(ylabel="rows", title="Cluster sizes per partition")
    if series:
        ax2.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, ncol=1)
    if n:
        _set_x_labels(ax2, labels)
    else:
        ax2.text(0.5, 0.5, "no partitions", ha="center", va="center", transform=ax2.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(v) -> str:
    if v is None:
        return NA
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v) if v else "-"
    return str(v)


def _table(head: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{th}</tr>\n{body}</table>\n"


def _html_page(timeline: dict, title: str, png: bytes) -> str:
    entries = [e for e in timeline.get("partitions") or [] if isinstance(e, dict)]
    part_rows = []
    for e in entries:
        gate = e.get("gate") if isinstance(e.get("gate"), dict) else {}
        part_rows.append(
            [
                e.get("partition"),
                e.get("rows"),
                e.get("drift_share"),
                e.get("drift_threshold"),
                e.get("drifted"),
                e.get("champion"),
                e.get("model_version"),
                e.get("refreshed"),
                e.get("challenger_version"),
                gate.get("metric"),
                gate.get("champion"),
                gate.get("challenger"),
                gate.get("margin"),
                gate.get("passed"),
                e.get("promoted"),
                e.get("new_ids"),
                e.get("retired_ids"),
            ]
        )
    partitions = _table(
        [
            "partition",
            "rows",
            "drift share",
            "threshold",
            "drifted",
            "champion",
            "assigned by",
            "refreshed",
            "challenger",
            "gate metric",
            "gate: champion",
            "gate: challenger",
            "margin",
            "gate passed",
            "promoted",
            "new ids",
            "retired ids",
        ],
        part_rows,
    )
    champions = _table(
        ["version", "from partition", "to partition", "current"],
        [
            [c.get("version"), c.get("from_partition"), c.get("to_partition"), c.get("current")]
            for c in timeline.get("champions") or []
            if isinstance(c, dict)
        ],
    )
    versions = _table(
        ["version", "parent", "created", "training partitions", "metrics", "new ids", "retired"],
        [
            [
                v.get("version"),
                v.get("parent"),
                v.get("created_at"),
                v.get("partitions"),
                ", ".join(f"{k}={_fmt(m)}" for k, m in sorted((v.get("metrics") or {}).items()))
                or None,
                v.get("new_ids"),
                v.get("retired_ids"),
            ]
            for v in timeline.get("versions") or []
            if isinstance(v, dict)
        ],
    )
    aliases = _table(
        ["seq", "alias", "version", "previous", "reason", "at"],
        [
            [
                h.get("seq"),
                h.get("alias"),
                h.get("version"),
                h.get("previous"),
                h.get("reason"),
                h.get("at"),
            ]
            for h in timeline.get("alias_history") or []
            if isinstance(h, dict)
        ],
    )
    n_ids = len(timeline.get("cluster_ids") or [])
    image = base64.b64encode(png).decode("ascii")
    alt = "Drift share per partition and cluster sizes per partition"
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;"
        "text-align:left}tr:nth-child(even){background:#f4f4f4}img{max-width:100%}</style>"
        "</head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n"
        f"<p>{len(entries)} partitions, {n_ids} cluster ids seen, "
        f"{len(timeline.get('refreshes') or [])} refreshes.</p>\n"
        f'<figure><img src="data:image/png;base64,{image}" alt="{html.escape(alt)}">'
        f"<figcaption>{html.escape(alt)}</figcaption></figure>\n"
        f"<h2>Partitions</h2>\n{partitions}"
        f"<h2>Champions</h2>\n{champions}"
        f"<h2>Versions</h2>\n{versions}"
        f"<h2>Alias history</h2>\n{aliases}"
        "</body></html>\n"
    )
