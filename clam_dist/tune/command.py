"""`clam-dist tune`: hyper-parameter search with Ray Tune (see clam_dist/tune/search.py).

clam-dist tune --dataset ecoli --set budget.num_samples=24 --output runs/tune/best.toml
clam-dist train --config runs/tune/best.toml --data s3://bucket/prefix
"""

from __future__ import annotations

import argparse
import json

from clam_dist.config import load_config
from clam_dist.tune.config import TuneJobConfig
from clam_dist.tune.space import check_job_config, knobs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        help="TOML/YAML/JSON tune config ([data], [model], [search], [budget], [score], [run])",
    )
    parser.add_argument("--dataset", default=None, help="shortcut for --set data.dataset=...")
    parser.add_argument("--data", default=None, help="shortcut for --set data.url=...")
    parser.add_argument(
        "--k", type=int, default=None, help="shortcut for --set model.n_clusters=..."
    )
    parser.add_argument(
        "--samples", type=int, default=None, help="shortcut for --set budget.num_samples=..."
    )
    parser.add_argument(
        "--output", default=None, help="shortcut for --set run.output=... (best config TOML)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override any field, e.g. --set search.lr=[0.001,0.05] --set budget.max_epochs=20",
    )
    parser.add_argument(
        "--address", default=None, help="Ray address (default: RAY_ADDRESS or a local Ray)"
    )


def load_tune_config(args: argparse.Namespace) -> TuneJobConfig:
    overrides = list(args.overrides)
    for flag, key in (
        (args.dataset, "data.dataset"),
        (args.data, "data.url"),
        (args.k, "model.n_clusters"),
        (args.samples, "budget.num_samples"),
        (args.output, "run.output"),
    ):
        if flag is not None:
            overrides.append(f"{key}={json.dumps(flag)}")
    config = load_config(TuneJobConfig, args.config, overrides)
    check_job_config(config)
    return config


def run(args: argparse.Namespace) -> int:
    # Errors propagate: the CLI prints one line on stderr (exit 2 for ConfigError).
    config = load_tune_config(args)  # every check that needs no data, before Ray starts
    from clam_dist.ray_session import start_ray
    from clam_dist.tune.search import run_tune

    start_ray(args.address)  # quiet; under `ray job submit` this joins the job's cluster
    summary = run_tune(config)  # its ConfigErrors come before the search (need the data)
    metric = summary["criterion"]["metric"]
    method_knobs = knobs(summary["method"])
    print(f"\nmethod {summary['method']}")
    print(
        f"{'trial':>5} {'epochs':>6} "
        + " ".join(f"{n:>12}" for n in method_knobs)
        + f" {metric:>12}"
    )
    for rec in sorted(summary["trials"], key=lambda r: r["trial"]):
        p = rec["point"]
        mark = " (default)" if rec["is_default"] else ""
        cells = " ".join(
            f"{p[n]:>12.4g}" if isinstance(p[n], float) else f"{p[n]!s:>12}" for n in method_knobs
        )
        print(f"{rec['trial']:>5} {rec['epochs']:>6} {cells} {rec['last'][metric]:>12.4f}{mark}")
    fin = summary["final"]
    print(f"\nselection: full budget, mean over seeds {fin['select_seeds']} (same rows):")
    for rec in fin["finalists"]:
        print(
            f"  trial {rec['trial']:>3}: {metric}={rec[metric]:.4f}; paired gain vs default "
            f"{rec['gain_vs_default']:+.4f}, better on "
            f"{rec['seeds_better_than_default']}/{len(fin['select_seeds'])} seeds"
        )
    print(f"  default  : {metric}={fin['default_select'][metric]:.4f}")
    best, d = fin["search_best"], fin["default"]
    if best.get("trial") is not None:
        err = best["gain_stderr"]
        print(
            f"confirmation on unseen seeds {fin['confirm_seeds']}: trial {best['trial']} "
            f"{metric}={best[metric]:.4f} (all rows {best['silhouette_all_rows']:.4f}), default "
            f"{d[metric]:.4f} (all rows {d['silhouette_all_rows']:.4f}); paired gain "
            f"{best['gain_vs_default']:+.4f}"
            + (f" +- {err:.4f}" if err is not None else "")
            + f", better on {best['seeds_better_than_default']}/{len(fin['confirm_seeds'])} seeds"
        )
    if d.get("silhouette_latent") is not None:  # DCAM: reported, not what decides
        print(
            f"latent-space Silhouette (not the criterion): searched "
            f"{best['silhouette_latent']:.4f}, default {d['silhouette_latent']:.4f}"
        )
    print(f"chosen: {summary['chosen']}; config written to {summary['output']}")
    print(f"TensorBoard: tensorboard --logdir {summary['tensorboard_logdir']}")
    return 0
