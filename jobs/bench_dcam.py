"""Benchmark: DCAM vs autoencoder + k-means vs k-means on the input features.

Data: scikit-learn's bundled digits (8x8 images, 1797 x 64, 10 classes; pixels scaled to
[0, 1], which DCAM's standardize="auto" keeps as they are) and ClAM-paper data sets
(standardised, as the paper does). For each encoder (mlp, conv on digits) it runs DCAM
with its DEFAULTS (only the encoder named), and, when any of the knob flags below is
given, the same with those knobs ("tuned"); AE + k-means is the same pretrained
autoencoder (same seed, epochs=0) then k-means in its latent. Reports Silhouette in the
space each method clusters in (latent for DCAM / AE+k-means, input for k-means), NMI,
ARI, ACC, the reconstruction ratio of the selected DCAM state, and fit time; mean and std
over seeds. Prints a table and writes JSON.

    python jobs/bench_dcam.py --datasets digits --seeds 0 1 2 3 4 --out bench_dcam.json
    python jobs/bench_dcam.py --datasets digits ecoli segment --pretrain-epochs 60 --epochs 40
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from clam_dist import DCAM, KMeans
from clam_dist.datasets.clam_paper import load_clam_paper, standardize
from clam_dist.metrics import ari, clustering_accuracy, nmi, silhouette


def load(name: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """(features, labels, standardise-inside-DCAM)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        return x / 16.0, y, False
    x, y = load_clam_paper(name)
    return standardize(x), y, False


def scores(space: np.ndarray, y: np.ndarray, labels: np.ndarray) -> dict:
    return {
        "silhouette": silhouette(space, labels),
        "nmi": nmi(y, labels),
        "ari": ari(y, labels),
        "acc": clustering_accuracy(y, labels),
    }


def run(name: str, seed: int, settings: dict[str, dict], conv: bool) -> list[dict]:
    """``settings``: label ("defaults", "tuned") -> DCAM keyword arguments."""
    x, y, _ = load(name)
    k = int(np.unique(y).size)
    rows = []
    t = time.perf_counter()
    km = KMeans(k, n_init=10, random_state=seed).fit(x)
    rows.append(
        {"method": "kmeans (input)", **scores(x, y, km.labels_), "seconds": time.perf_counter() - t}
    )
    encoders = ["mlp", "conv"] if conv and name == "digits" else ["mlp"]
    for enc, (label, dcam_kwargs) in ((e, s) for e in encoders for s in settings.items()):
        kw = dict(dcam_kwargs, encoder=enc, random_state=seed)
        tag = enc if label == "defaults" else f"{enc}, {label}"
        # Same seed: the AE-only fit (epochs=0) pretrains exactly the autoencoder the
        # DCAM fit starts from, so the comparison isolates the joint phase.
        t = time.perf_counter()
        ae = DCAM(k, **dict(kw, epochs=0)).fit(x)
        z = ae.transform(x)
        ae_km = KMeans(k, n_init=10, random_state=seed).fit(z)
        rows.append(
            {
                "method": f"AE({tag}) + kmeans",
                **scores(z, y, ae_km.labels_),
                "seconds": time.perf_counter() - t,
            }
        )
        t = time.perf_counter()
        model = DCAM(k, **kw).fit(x)
        rows.append(
            {
                "method": f"DCAM({tag})",
                **scores(model.transform(x), y, model.labels_),
                "seconds": time.perf_counter() - t,
                "recon_ratio": model.recon_ratio_,
                "best_epoch": model.best_epoch_,
            }
        )
    for r in rows:
        r.update(dataset=name, seed=seed, n=int(x.shape[0]), d=int(x.shape[1]), k=k)
    return rows


def trainer_rows(name: str, seeds: list[int], workers: int) -> list[dict]:
    """The distributed trainer's DCAM (Ray Train, ``workers`` CPU workers, local Ray) on the
    same rows: the method's defaults (data.standardize "auto", lr, pretraining, networks
    from methods/dcam), with the estimator's joint epochs and batch per step, which the
    shared [optim] section does not default to. Labels from the artifact's predictor,
    Silhouette in its encoder's latent space."""
    import tempfile

    import ray

    from clam_dist.artifacts import load_artifact
    from clam_dist.config import load_config
    from clam_dist.data.writer import write_vectors
    from clam_dist.methods.dcam.config import JOINT_EPOCHS
    from clam_dist.models.predictor import ClusterPredictor
    from clam_dist.train.config import TrainConfig
    from clam_dist.train.trainer import run_training

    x, y = load(name)[:2]
    k = int(np.unique(y).size)
    batch = DCAM().get_params()["batch_size"] // workers  # the estimator's rows per step
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-dcam-") as tmp:
        write_vectors(f"{tmp}/data", x.astype(np.float32))
        ray.init(num_cpus=max(2, workers), include_dashboard=False, log_to_driver=False)
        try:
            for seed in seeds:
                sets = [f"data.url={tmp}/data", "model.method=dcam", f"model.n_clusters={k}"]
                sets += [f"optim.epochs={JOINT_EPOCHS}", f"optim.batch_size={batch}"]
                sets += [f"run.seed={seed}", f"run.num_workers={workers}"]
                sets += [f"run.storage_path={tmp}/runs", f"run.name=seed{seed}"]
                t = time.perf_counter()
                result = run_training(load_config(TrainConfig, None, sets))
                seconds = time.perf_counter() - t
                art = load_artifact(result.artifact_url)
                labels = ClusterPredictor.from_artifact(art).predict(x)["cluster"]
                zin = (x - art.scaler_mean) / art.scaler_scale if art.scaler_mean is not None else x
                with torch.no_grad():
                    z = art.encoder()(torch.as_tensor(zin, dtype=torch.float32)).numpy()
                rows.append(
                    {
                        "method": f"trainer DCAM(mlp), {workers} worker(s)",
                        **scores(z, y, labels),
                        "seconds": seconds,
                        "dataset": name,
                        "seed": seed,
                    }
                )
        finally:
            ray.shutdown()
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["dataset"], r["method"]) for r in rows}, key=lambda t: (t[0], t[1]))
    for ds, method in keys:
        sel = [r for r in rows if r["dataset"] == ds and r["method"] == method]
        s = {"dataset": ds, "method": method, "seeds": len(sel)}
        for m in ("silhouette", "nmi", "ari", "acc", "seconds", "recon_ratio"):
            vals = [r[m] for r in sel if m in r]
            if vals:
                s[m], s[m + "_std"] = float(np.mean(vals)), float(np.std(vals))
        out.append(s)
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--datasets", nargs="+", default=["digits", "ecoli", "segment"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    # Knobs of a "tuned" setting run beside the defaults; unset: the defaults only.
    p.add_argument("--pretrain-epochs", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="joint epochs")
    p.add_argument("--latent-dim", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--hidden", type=int, nargs="+", default=None)
    p.add_argument("--mask-ratio", type=float, default=None)
    p.add_argument("--recon-weight", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--no-conv", action="store_true", help="skip the conv encoder on digits")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest for these sizes)"
    )
    p.add_argument(
        "--trainer-workers",
        type=int,
        default=0,
        help="also train DCAM on the distributed trainer with this many workers (digits; 0: no)",
    )
    p.add_argument("--out", default="bench_dcam.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    knobs = ("pretrain_epochs", "epochs", "latent_dim", "lr", "hidden", "mask_ratio")
    knobs += ("recon_weight", "batch_size")
    tuned = {n: getattr(a, n) for n in knobs if getattr(a, n) is not None}
    settings = {"defaults": {}, **({"tuned": tuned} if tuned else {})}
    rows = [r for ds in a.datasets for s in a.seeds for r in run(ds, s, settings, not a.no_conv)]
    if a.trainer_workers:
        rows += trainer_rows("digits", a.seeds, a.trainer_workers)
    summary = summarise(rows)
    print("| data set | method | Silhouette | NMI | ARI | ACC | recon ratio | fit s |")
    print("|---|---|---|---|---|---|---|---|")
    for s in summary:
        rr = f"{s['recon_ratio']:.3f}" if "recon_ratio" in s else "-"
        print(
            f"| {s['dataset']} | {s['method']} | {s['silhouette']:.3f} ± {s['silhouette_std']:.3f} | "
            f"{s['nmi']:.3f} ± {s['nmi_std']:.3f} | {s['ari']:.3f} ± {s['ari_std']:.3f} | "
            f"{s['acc']:.3f} ± {s['acc_std']:.3f} | {rr} | {s['seconds']:.1f} |"
        )
    with open(a.out, "w") as f:
        json.dump(
            {"args": vars(a), "settings": settings, "summary": summary, "runs": rows}, f, indent=2
        )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
