"""Benchmark: attention-based clustering (trained heads, dot and distance scores; and
parameter-free in-context quantization) vs ClAM and k-means.

Data: generated Gaussian mixtures (unit-variance clusters, centres at distance ``sep``
from the origin along random directions) and ClAM-paper data sets (standardised).
Reports Silhouette (input space), NMI and ARI, number of clusters found, and fit time;
mean and std over seeds. In-context quantization is not told k: it reports how many
groups one context collapsed into (the whole data set is one context here).

    python jobs/bench_attention.py --seeds 0 1 2 --out bench_attention.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from clam_dist import AttentionClustering, ClAM, KMeans
from clam_dist.datasets.clam_paper import load_clam_paper, standardize
from clam_dist.metrics import ari, nmi, silhouette
from clam_dist.models.attention import quantize_context

MIXTURES = {
    "mix-k2-d5": (2, 5, 300, 4.0),
    "mix-k5-d10": (5, 10, 200, 4.0),
    "mix-k10-d16": (10, 16, 100, 5.0),
}


def mixture(k: int, d: int, n_per: int, sep: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1000 + seed)
    centres = rng.normal(size=(k, d))
    centres *= sep / np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.concatenate([c + rng.normal(size=(n_per, d)) for c in centres])
    return x, np.repeat(np.arange(k), n_per)


def load(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if name in MIXTURES:
        return mixture(*MIXTURES[name], seed)
    x, y = load_clam_paper(name)
    return standardize(x), y


def methods(k: int, seed: int) -> dict:
    return {
        "kmeans": lambda x: KMeans(k, n_init=10, random_state=seed).fit(x).labels_,
        "ClAM": lambda x: ClAM(k, random_state=seed).fit(x).labels_,
        "attention (distance)": lambda x: AttentionClustering(k, random_state=seed).fit(x).labels_,
        "attention (dot)": lambda x: (
            AttentionClustering(k, similarity="dot", random_state=seed).fit(x).labels_
        ),
        "in-context quantization": lambda x: quantize_context(
            torch.as_tensor(x, dtype=torch.float32)
        ).groups.numpy(),
    }


def run(name: str, seed: int) -> list[dict]:
    x, y = load(name, seed)
    k = int(np.unique(y).size)
    rows = []
    for method, fit in methods(k, seed).items():
        t = time.perf_counter()
        labels = fit(x)
        seconds = time.perf_counter() - t
        rows.append(
            {
                "dataset": name, "method": method, "seed": seed, "n": int(x.shape[0]), "d": int(x.shape[1]), "k": k,
                "clusters_found": int(np.unique(labels).size), "silhouette": silhouette(x, labels),
                "nmi": nmi(y, labels), "ari": ari(y, labels), "seconds": seconds,
            }
        )  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--datasets", nargs="+", default=[*MIXTURES, "ecoli", "segment", "ctg"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="bench_attention.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = [r for ds in a.datasets for s in a.seeds for r in run(ds, s)]
    summary = []
    print("| data set | method | clusters found | Silhouette | NMI | ARI | fit s |")
    print("|---|---|---|---|---|---|---|")
    for ds in a.datasets:
        for method in methods(1, 0):
            sel = [r for r in rows if r["dataset"] == ds and r["method"] == method]
            s = {"dataset": ds, "method": method, "k": sel[0]["k"], "seeds": len(sel)}
            for m in ("clusters_found", "silhouette", "nmi", "ari", "seconds"):
                # silhouette is nan (undefined) when everything fell into one group
                vals = np.array([r[m] for r in sel], dtype=float)
                ok = vals[np.isfinite(vals)]
                s[m], s[m + "_std"] = (
                    (float(ok.mean()), float(ok.std())) if ok.size else (float("nan"),) * 2
                )
            summary.append(s)
            print(
                f"| {ds} (k={s['k']}) | {method} | {s['clusters_found']:.1f} | "
                f"{s['silhouette']:.3f} ± {s['silhouette_std']:.3f} | {s['nmi']:.3f} ± {s['nmi_std']:.3f} | "
                f"{s['ari']:.3f} ± {s['ari_std']:.3f} | {s['seconds']:.2f} |"
            )
    with open(a.out, "w") as f:
        json.dump({"args": vars(a), "summary": summary, "runs": rows}, f, indent=2)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
