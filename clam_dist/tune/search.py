"""Ray Tune wiring: load a sample, run the trials under ASHA, re-check the winner against
the default configuration, write the best configuration as a training config.

Outputs (all written only when the search finished):
  run.output                     TrainConfig TOML: `clam-dist train --config <it> ...`
  <output dir>/tune_summary.json every trial's knobs and scores, the default vs best
                                 comparison, per-stage seconds
  <storage_path>/<name>/         Tune's own results: per-trial result.json, progress.csv and
                                 TensorBoard event files (`tensorboard --logdir <there>`)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clam_dist.config import dumps_toml, load_config, to_dict
from clam_dist.tune.config import TuneJobConfig
from clam_dist.tune.space import (
    DEFAULT_POINT,
    check_job_config,
    default_in_space,
    steps_for,
    tune_domains,
)
from clam_dist.tune.trial import ClAMTrial, TrialData, TrialParams, split_sample


def log_event(event: str, **fields) -> None:
    """One JSON object per line on stdout: what a log collector can parse. Never pass
    storage options or other credentials here."""
    print(
        json.dumps({"event": event, "ts": round(time.time(), 3), **fields}, default=str), flush=True
    )


@dataclass
class LoadedData:
    x: np.ndarray  # standardised (when asked) sample, float32
    n_clusters: int
    source: str


def load_sample(config: TuneJobConfig) -> LoadedData:
    d = config.data
    if d.dataset is not None:
        from clam_dist.datasets.clam_paper import load_clam_paper, standardize

        x, y = load_clam_paper(d.dataset)
        if d.sample < x.shape[0]:
            idx = np.random.default_rng(config.run.seed).choice(x.shape[0], d.sample, replace=False)
            x, y = x[idx], y[idx]
        x = standardize(x) if d.standardize else x
        k = config.model.n_clusters or int(np.unique(y).size)
        return LoadedData(x.astype(np.float32), k, f"bundled:{d.dataset}")
    from clam_dist.data.source import VectorSource
    from clam_dist.data.stats import feature_stats, sample_rows

    source = VectorSource(
        d.url,
        vector_column=d.vector_column,
        feature_columns=d.feature_columns,
        storage_options=d.storage_options,
    )
    x = sample_rows(source, d.sample, config.run.seed).x.astype(np.float64)
    if d.standardize:
        # Global statistics, as the training job standardises with them.
        stats = feature_stats(source)
        x = (x - stats.mean) / np.where(stats.std > 0, stats.std, 1.0)
    return LoadedData(x.astype(np.float32), config.model.n_clusters, str(d.url))


def trial_params(config: TuneJobConfig, k: int, point: dict) -> TrialParams:
    m = config.model
    return TrialParams(
        n_clusters=k,
        beta_scale=float(point["beta_scale"]),
        lr=float(point["lr"]),
        mask_ratio=float(point["mask_ratio"]),
        alpha=float(point["alpha"]),
        steps=steps_for(float(point["alpha"]), config.search, m.steps),
        metric=m.metric,
        fill=m.fill,
        batch_size=m.batch_size,
        seed=config.run.seed,
    )


def _trainable(point: dict, data: TrialData, config_dict: dict, k: int, threads: int) -> None:
    """Runs inside a Tune trial actor: one report per epoch (ASHA's time unit)."""
    import torch
    from ray import tune

    from clam_dist.config import from_dict

    torch.set_num_threads(threads)  # stay within the CPUs the trial reserved
    config = from_dict(TuneJobConfig, config_dict)
    trial = ClAMTrial(data, trial_params(config, k, point))
    for _ in range(config.budget.max_epochs):
        tune.report(trial.step())


def _metric_mode(config: TuneJobConfig) -> tuple[str, str]:
    if config.score.criterion == "silhouette":
        return "silhouette", "max"
    return "heldout_loss", "min"


def _better(a: float, b: float, mode: str) -> bool:
    return a >= b if mode == "max" else a <= b


def run_search(config: TuneJobConfig, data: TrialData, k: int) -> list[dict]:
    """Run the Tune search; returns one record per trial (knobs, last metrics, epochs)."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    b, metric_mode = config.budget, _metric_mode(config)
    metric, mode = metric_mode
    points = (
        [dict(DEFAULT_POINT)]
        if config.run.include_default and default_in_space(config.search)
        else []
    )
    callbacks = []
    if config.run.mlflow_tracking_uri:
        try:
            from ray.air.integrations.mlflow import MLflowLoggerCallback
        except ImportError as exc:  # pragma: no cover - mlflow absent here
            raise RuntimeError(
                "run.mlflow_tracking_uri is set but mlflow is not installed"
            ) from exc
        callbacks.append(
            MLflowLoggerCallback(
                tracking_uri=config.run.mlflow_tracking_uri, experiment_name=config.run.name
            )
        )
    threads = max(1, int(b.cpus_per_trial))
    trainable = tune.with_resources(
        tune.with_parameters(
            _trainable, data=data, config_dict=to_dict(config), k=k, threads=threads
        ),
        {"cpu": b.cpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=tune_domains(config.search),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            scheduler=ASHAScheduler(
                max_t=b.max_epochs, grace_period=b.grace_period, reduction_factor=b.reduction_factor
            ),
            search_alg=BasicVariantGenerator(
                points_to_evaluate=points, random_state=config.run.seed
            ),
            num_samples=b.num_samples + len(points),
            max_concurrent_trials=b.max_concurrent or None,
        ),
        run_config=tune.RunConfig(
            name=config.run.name,
            storage_path=_abs_storage(config.run.storage_path),
            callbacks=callbacks,
            verbose=0,
        ),
    )
    log_event(
        "search_start",
        trials=b.num_samples + len(points),
        cluster_cpus=ray.cluster_resources().get("CPU"),
    )
    grid = tuner.fit()
    records = []
    for i, result in enumerate(grid):
        if result.error is not None:
            log_event("trial_error", trial=i, error=str(result.error).splitlines()[0])
            continue
        point = {key: result.config[key] for key in DEFAULT_POINT}
        last = {
            key: result.metrics.get(key)
            for key in (metric, "silhouette", "heldout_loss", "train_loss", "n_nonempty", "beta")
        }
        rec = {
            "trial": i,
            "trial_dir": result.path,
            "point": point,
            "steps": steps_for(point["alpha"], config.search, config.model.steps),
            "epochs": int(result.metrics.get("training_iteration", 0)),
            "is_default": point == DEFAULT_POINT,
            "last": last,
        }
        records.append(rec)
        log_event("trial_done", trial=i, epochs=rec["epochs"], score=last[metric], **point)
    if not records:
        raise RuntimeError(f"every one of {len(grid)} trials failed; see {grid.experiment_path}")
    return records


def _abs_storage(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def pick_best(records: list[dict], metric: str, mode: str, max_epochs: int) -> dict:
    """Best last score among trials that ran the whole budget (ASHA's survivors); a trial
    stopped early is compared at fewer epochs, so it only wins when none survived."""
    full = [r for r in records if r["epochs"] >= max_epochs] or records
    key = (lambda r: r["last"][metric]) if mode == "max" else (lambda r: -r["last"][metric])
    return max(full, key=key)


def final_check(
    config: TuneJobConfig, data: TrialData, x_all: np.ndarray, k: int, point: dict
) -> dict:
    """Re-train one configuration for the full budget (deterministic: same seed, same init)
    and score it on the same rows as every other, plus Silhouette on every loaded row."""
    import torch

    from clam_dist.metrics import silhouette
    from clam_dist.models.am import assign

    # The trials' thread count: a different BLAS split changes float sums, and training
    # at a large lr can amplify that into a different result.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(config.budget.cpus_per_trial)))
    try:
        trial = ClAMTrial(data, trial_params(config, k, point))
        for _ in range(config.budget.max_epochs):
            metrics = trial.step()
    finally:
        torch.set_num_threads(threads)
    protos, am = trial.final_prototypes(), trial.am
    labels, _ = assign(torch.from_numpy(x_all), protos, am.beta, am.alpha, am.steps, am.metric)
    metrics["silhouette_all_rows"] = float(
        silhouette(
            x_all, labels.numpy(), sample_size=10_000, seed=config.run.seed, metric=am.metric
        )
    )
    metrics["beta_default"] = float(trial.beta_default)
    metrics["steps"] = int(am.steps)
    return metrics


def train_config_text(
    config: TuneJobConfig, k: int, point: dict, final: dict, header: list[str]
) -> str:
    """The chosen configuration as TrainConfig TOML. Only the fields the search decided are
    written; every other field keeps the training job's default. The caller reads the file
    back with ``load_config(TrainConfig, ...)``."""
    import dataclasses

    from clam_dist.train.config import TrainOptim

    m, d = config.model, config.data
    data = {"standardize": d.standardize}
    if d.url:
        # storage_options are left out on purpose: they may hold credentials.
        data.update(url=d.url, vector_column=d.vector_column, feature_columns=d.feature_columns)
    optim = {
        "lr": float(point["lr"]),
        "epochs": config.budget.max_epochs,
        "batch_size": m.batch_size,
    }
    if "schedule" in {f.name for f in dataclasses.fields(TrainOptim)}:
        optim["schedule"] = "plateau"  # the schedule the trials ran with
    body = {
        "data": data,
        "model": {
            "method": "clam",
            "n_clusters": k,
            "init": "kmeans",
            "beta": float(final["beta"]),
            "alpha": float(point["alpha"]),
            "steps": int(final["steps"]),
            "metric": m.metric,
            "mask_ratio": float(point["mask_ratio"]),
            "fill": m.fill,
        },
        "optim": optim,
    }
    return "".join(f"# {line}\n" for line in header) + "\n" + dumps_toml(body)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a reader sees the old file or the whole new one


def run_tune(config: TuneJobConfig) -> dict:
    """The whole tuning job; returns (and writes) the summary."""
    import ray

    from clam_dist.train.config import TrainConfig

    check_job_config(config)
    timings: dict[str, float] = {}
    metric, mode = _metric_mode(config)

    t0 = time.perf_counter()
    loaded = load_sample(config)
    data = split_sample(
        loaded.x,
        config.score.holdout if config.score.criterion == "heldout_loss" else 0.0,
        config.score.silhouette_sample,
        config.run.seed,
    )
    k = loaded.n_clusters
    if data.train.shape[0] < k:
        raise ValueError(f"the sample has {data.train.shape[0]} training rows, fewer than k={k}")
    timings["load_data"] = time.perf_counter() - t0
    log_event(
        "data_loaded",
        source=loaded.source,
        rows=int(loaded.x.shape[0]),
        dim=int(loaded.x.shape[1]),
        k=k,
    )

    t0 = time.perf_counter()
    if not ray.is_initialized():
        ray.init()  # under `ray job submit` RAY_ADDRESS points at the job's cluster
    records = run_search(config, data, k)
    timings["search"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    best = pick_best(records, metric, mode, config.budget.max_epochs)
    best_final = final_check(config, data, loaded.x, k, best["point"])
    default_final = final_check(config, data, loaded.x, k, DEFAULT_POINT)
    timings["final_check"] = time.perf_counter() - t0
    # The default is a candidate too: keep it when the searched winner does not beat it
    # at the full budget (ASHA judged the searched ones on partial runs).
    search_wins = (
        _better(best_final[metric], default_final[metric], mode) and not best["is_default"]
    )
    chosen_point, chosen = (
        (best["point"], best_final) if search_wins else (DEFAULT_POINT, default_final)
    )

    out = Path(config.run.output)
    header = [
        f"written by `clam-dist tune` ({config.run.name}) on {loaded.source}, k={k}",
        f"criterion {metric} ({mode}): chosen {chosen[metric]:.4f}, default {default_final[metric]:.4f}",
        f"chosen = {'searched configuration' if search_wins else 'default configuration'}; "
        f"beta = {chosen_point['beta_scale']:.3g} x data-derived {chosen['beta_default']:.4g}",
    ]
    text = train_config_text(config, k, chosen_point, chosen, header)
    _write_atomic(out, text)
    load_config(TrainConfig, out)  # what the training job will do: fail here, not there
    summary = {
        "status": "succeeded",
        "source": loaded.source,
        "k": k,
        "criterion": {"metric": metric, "mode": mode},
        "config": _redacted(to_dict(config)),
        "trials": records,
        "best_trial": best["trial"],
        "final": {
            "search_best": {"point": best["point"], **best_final},
            "default": {"point": DEFAULT_POINT, **default_final},
        },
        "chosen": "search" if search_wins else "default",
        "output": str(out),
        "tensorboard_logdir": os.path.join(_abs_storage(config.run.storage_path), config.run.name),
        "timings_s": {key: round(v, 3) for key, v in timings.items()},
    }
    _write_atomic(out.with_name("tune_summary.json"), json.dumps(summary, indent=2, default=str))
    log_event(
        "tune_done",
        chosen=summary["chosen"],
        best=best_final[metric],
        default=default_final[metric],
        output=str(out),
        timings_s=summary["timings_s"],
    )
    return summary


def _redacted(cfg: dict) -> dict:
    opts = cfg.get("data", {}).get("storage_options")
    if opts:
        from clam_dist.data.source import redact

        cfg["data"]["storage_options"] = redact(opts)
    return cfg
