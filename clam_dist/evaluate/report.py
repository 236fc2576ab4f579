"""PNG plots and a small HTML page for a run's metrics (matplotlib, Agg backend).

Files: metrics.json, cluster_sizes.json, cluster_sizes.png, projection.png (PCA of a
sample coloured by cluster), energy.png (sampled AM energy, with the training 99th
percentile when known), training.png (when a loss history exists), clusters.json (per
cluster: size, mean distance, mean energy, the ids of the rows nearest the prototype),
partitions.json and drift.png (drift share per partition, when several outputs of the
model were evaluated together) and index.html showing them all, with the per-cluster
table and the model beside its k-means baseline on the same sample.
"""

from __future__ import annotations

import html
import json
import math
import tempfile
from pathlib import Path

import numpy as np


def pca_2d(z: np.ndarray) -> np.ndarray:
    """First two principal components of the rows of z (zero-padded below 2 columns)."""
    zc = np.asarray(z, dtype=np.float64)
    zc = zc - zc.mean(0) if len(zc) else zc
    if zc.shape[1] <= 2:
        return np.pad(zc, ((0, 0), (0, 2 - zc.shape[1])))
    _, _, vt = np.linalg.svd(zc, full_matrices=False)
    return zc @ vt[:2].T


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# Up to this many clusters the sizes are drawn as bars; beyond, as one filled step line:
# matplotlib adds one patch per bar (65,536 bars took minutes in a 10M-row report).
SIZE_BARS_UP_TO = 256


def _sizes_figure(sizes: np.ndarray):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    s = np.sort(np.asarray(sizes))[::-1]
    if s.size <= SIZE_BARS_UP_TO:
        ax.bar(np.arange(s.size), s, color="#4477aa", width=1.0 if s.size > 64 else 0.8)
    else:
        ax.stairs(s, np.arange(s.size + 1), fill=True, color="#4477aa")
    ax.set(xlabel="cluster (sorted by size)", ylabel="rows", title=f"Cluster sizes (k = {s.size})")
    return fig


def _plot_sizes(sizes: np.ndarray, path: Path) -> None:
    _save(_sizes_figure(sizes), path)


def _plot_projection(z: np.ndarray, clusters: np.ndarray, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    xy = pca_2d(z)
    ax.scatter(xy[:, 0], xy[:, 1], c=np.asarray(clusters) % 20, s=4, cmap="tab20")
    ax.set(title=f"Sample of {len(xy)} rows, PCA of model space", xlabel="PC 1", ylabel="PC 2")
    _save(fig, path)


def _plot_energy(energy: np.ndarray, p99: float | None, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    e = np.asarray(energy, dtype=np.float64)
    ax.hist(e[np.isfinite(e)], bins=60, color="#228833")
    if p99 is not None:
        ax.axvline(p99, color="#cc3311", linestyle="--", label="training 99th percentile")
        ax.legend()
    ax.set(
        xlabel="AM energy (high = far from every memory)", ylabel="rows", title="Energy (sample)"
    )
    _save(fig, path)


def _plot_training(history, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    series = history if isinstance(history, dict) else {"training loss": history}
    for name, values in series.items():
        ax.plot(np.arange(1, len(values) + 1), values, marker=".", label=str(name))
    if len(series) > 1:
        ax.legend()
    ax.set(xlabel="epoch", ylabel="loss", title="Training curve")
    _save(fig, path)


def _plot_drift(partitions: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(partitions) + 2), 3.5))
    names = [str(p["partition"] or p["assignments"].rsplit("/", 1)[-1]) for p in partitions]
    shares = [p["share_above"] if p["share_above"] is not None else 0.0 for p in partitions]
    ax.bar(np.arange(len(names)), shares, color="#cc6677")
    ax.axhline(0.01, color="#444444", linestyle="--", label="expected without drift (1%)")
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
    ax.set(ylabel="share above training energy p99", title="Drift by partition")
    ax.legend()
    _save(fig, path)


# The HTML table shows the largest clusters; clusters.json has every one.
HTML_CLUSTER_ROWS = 50


def _cluster_table(clusters: list[dict]) -> str:
    largest = sorted(clusters, key=lambda c: -c["size"])[:HTML_CLUSTER_ROWS]
    head = (
        "<tr><th>cluster</th><th>rows</th><th>mean distance</th><th>mean energy</th>"
        "<th>ids nearest the prototype</th></tr>"
    )
    body = "\n".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(v)}</td>"
            for v in (
                str(c["cluster"]),
                str(c["size"]),
                _fmt(c["mean_distance"]) if c["mean_distance"] is not None else "",
                _fmt(c["mean_energy"]) if c["mean_energy"] is not None else "",
                ", ".join(str(i) for i in c["nearest_ids"]),
            )
        )
        + "</tr>"
        for c in largest
    )
    more = (
        f"<p>The {len(largest)} largest of {len(clusters)} clusters; all in "
        '<a href="clusters.json">clusters.json</a>.</p>'
        if len(clusters) > len(largest)
        else '<p>Also in <a href="clusters.json">clusters.json</a>.</p>'
    )
    return f"<h2>Clusters</h2>\n<table>{head}\n{body}</table>\n{more}\n"


def _baseline_table(metrics: dict) -> str:
    if "kmeans_baseline_silhouette" not in metrics:
        note = metrics.get("kmeans_baseline_note")
        return f"<h2>k-means baseline</h2><p>{html.escape(note)}</p>\n" if note else ""
    rows = [("Silhouette", metrics.get("silhouette"), metrics["kmeans_baseline_silhouette"])]
    if "kmeans_baseline_nmi" in metrics:
        rows += [
            ("NMI", metrics["sample_nmi"], metrics["kmeans_baseline_nmi"]),
            ("ARI", metrics["sample_ari"], metrics["kmeans_baseline_ari"]),
        ]
    body = "".join(
        f"<tr><td>{name}</td><td>{html.escape(_fmt(a))}</td><td>{html.escape(_fmt(b))}</td></tr>"
        for name, a, b in rows
    )
    return (
        "<h2>Model vs k-means baseline</h2>\n"
        f"<p>Both on the same {html.escape(metrics['kmeans_baseline_on'])}.</p>\n"
        f"<table><tr><th></th><th>this model</th><th>k-means</th></tr>{body}</table>\n"
    )


def _partition_table(partitions: list[dict]) -> str:
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(v)}</td>"
            for v in (
                str(p["partition"] or ""),
                p["assignments"],
                str(p["rows"]),
                _fmt(p["share_above"]) if p["share_above"] is not None else "not measured",
            )
        )
        + "</tr>"
        for p in partitions
    )
    return (
        "<h2>Drift by partition</h2>\n<table><tr><th>partition</th><th>assignments</th>"
        f"<th>rows</th><th>share above training energy p99</th></tr>{body}</table>\n"
    )


def _has_history(history) -> bool:
    if isinstance(history, dict):
        return any(len(v) for v in history.values())
    return bool(history)


# The name a report's manifest carries: only folders it names are ever rewritten.
REPORT_WRITER = "clam-dist evaluate"


def report_prefix(out_dir: str | Path, storage_options: dict | None = None):
    """The report folder as an output prefix (clam_dist.assign.commit): every file written
    there is recorded first, and only recorded files are ever replaced."""
    from clam_dist.assign.commit import OutputPrefix

    url = str(out_dir)
    return OutputPrefix(url.removeprefix("file://"), storage_options, writer=REPORT_WRITER)


def check_report_dir(out_dir: str | Path, storage_options: dict | None = None) -> None:
    """Refuse, before any work, a report folder that holds files we did not write (a
    missing bucket too). A report folder of our own is rewritten: a report is always
    regenerated from the assignments, so a re-run replaces it."""
    report_prefix(out_dir, storage_options).check(overwrite=True)


def write_report(
    out_dir: str | Path,
    metrics: dict,
    plots: dict,
    title: str = "clam-dist run",
    storage_options: dict | None = None,
) -> list[str]:
    """Write the report into ``out_dir`` (a local folder or any fsspec URL); returns the
    file names. ``plots`` keys: sizes, sample_z, sample_clusters, and optionally
    sample_energy, energy_p99, loss_history (a list, or a dict of named lists).

    The folder follows the rule of every output: files are staged, recorded, then moved
    into place with ``_manifest.json`` and ``_SUCCESS``; a folder holding files of any
    other origin is refused (ForeignOutputError) and left untouched, and the files of an
    earlier report of ours that this one does not write again are removed."""
    import matplotlib

    matplotlib.use("Agg")

    prefix = report_prefix(out_dir, storage_options)
    staging = prefix.prepare(overwrite=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            written = _write_files(Path(tmp), metrics, plots, title)
            spath = prefix.staging_path(staging)
            for name in written:
                prefix.fs.put_file(str(Path(tmp) / name), f"{spath}/{name}")
        prefix.commit(staging, 0, {"title": title}, extra_files=written)
    except BaseException:
        prefix.abort(staging)
        raise
    return written


def _write_files(out: Path, metrics: dict, plots: dict, title: str) -> list[str]:
    (out / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2, sort_keys=True))
    written = ["metrics.json"]
    sizes = np.asarray(plots["sizes"])
    (out / "cluster_sizes.json").write_text(json.dumps([int(s) for s in sizes]))
    written.append("cluster_sizes.json")
    figures = [("cluster_sizes.png", "Rows per cluster, largest first")]
    _plot_sizes(sizes, out / "cluster_sizes.png")
    _plot_projection(plots["sample_z"], plots["sample_clusters"], out / "projection.png")
    figures.append(("projection.png", "2-D PCA projection of the evaluation sample"))
    if plots.get("sample_energy") is not None:
        _plot_energy(plots["sample_energy"], plots.get("energy_p99"), out / "energy.png")
        figures.append(("energy.png", "AM energy of the sample (novelty score)"))
    if _has_history(plots.get("loss_history")):
        _plot_training(plots["loss_history"], out / "training.png")
        figures.append(("training.png", "Training curve"))
    clusters = plots.get("clusters") or []
    partitions = plots.get("partitions") or []
    if clusters:
        (out / "clusters.json").write_text(json.dumps(_jsonable(clusters), indent=1))
        written.append("clusters.json")
    if partitions:
        (out / "partitions.json").write_text(json.dumps(_jsonable(partitions), indent=2))
        written.append("partitions.json")
        _plot_drift(partitions, out / "drift.png")
        figures.append(("drift.png", "Share of rows above the training energy p99, per partition"))
    written += [name for name, _ in figures]

    rows = "\n".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>"
        for k, v in sorted(metrics.items())
    )
    images = "\n".join(
        f'<figure><img src="{name}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, caption in figures
    )
    (out / "index.html").write_text(
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:2px 10px}"
        "figure{display:inline-block;margin:1em}</style></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n<h2>Metrics</h2>\n<table>{rows}</table>\n"
        + _baseline_table(metrics)
        + (_cluster_table(clusters) if clusters else "")
        + (_partition_table(partitions) if partitions else "")
        + f"<h2>Plots</h2>\n{images}\n"
        '<p>All numbers: <a href="metrics.json">metrics.json</a>; sizes: '
        '<a href="cluster_sizes.json">cluster_sizes.json</a>.</p>\n</body></html>\n'
    )
    written.append("index.html")
    return written


def _jsonable(value):
    """NaN/inf become null (strict JSON), numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
