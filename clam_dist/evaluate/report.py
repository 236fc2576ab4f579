"""PNG plots and a small HTML page for a run's metrics (matplotlib, Agg backend)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np


def _pca_2d(z: np.ndarray) -> np.ndarray:
    zc = z - z.mean(0)
    if zc.shape[1] <= 2:
        return np.pad(zc, ((0, 0), (0, 2 - zc.shape[1])))
    _, _, vt = np.linalg.svd(zc, full_matrices=False)
    return zc @ vt[:2].T


def write_report(
    out_dir: str | Path, metrics: dict, plots: dict, title: str = "clam-dist run"
) -> list[str]:
    """Write metrics.json, cluster_sizes.png, projection.png, training.png (when a loss
    history exists) and index.html into out_dir; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    written = ["metrics.json"]

    fig, ax = plt.subplots(figsize=(7, 3.5))
    sizes = np.sort(np.asarray(plots["sizes"]))[::-1]
    ax.bar(np.arange(sizes.size), sizes, color="#4477aa")
    ax.set(xlabel="cluster (sorted by size)", ylabel="rows", title="Cluster sizes")
    fig.tight_layout()
    fig.savefig(out / "cluster_sizes.png", dpi=100)
    plt.close(fig)
    written.append("cluster_sizes.png")

    fig, ax = plt.subplots(figsize=(5.5, 5))
    xy = _pca_2d(np.asarray(plots["sample_z"], dtype=np.float64))
    ax.scatter(xy[:, 0], xy[:, 1], c=plots["sample_clusters"], s=4, cmap="tab20")
    ax.set(title=f"Sample ({len(xy)} rows), PCA of model space", xlabel="PC 1", ylabel="PC 2")
    fig.tight_layout()
    fig.savefig(out / "projection.png", dpi=100)
    plt.close(fig)
    written.append("projection.png")

    if plots.get("loss_history"):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(plots["loss_history"], marker=".")
        ax.set(xlabel="epoch", ylabel="training loss", title="Training curve")
        fig.tight_layout()
        fig.savefig(out / "training.png", dpi=100)
        plt.close(fig)
        written.append("training.png")

    rows = "\n".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>"
        for k, v in sorted(metrics.items())
    )
    images = "\n".join(
        f'<p><img src="{name}" alt="{name}"></p>' for name in written if name.endswith(".png")
    )
    (out / "index.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><table border='1' cellpadding='4'>{rows}</table>{images}</body></html>\n"
    )
    written.append("index.html")
    return written


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
