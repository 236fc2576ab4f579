"""Ray Tune wiring: load a sample, run the trials under ASHA, choose between the best
searched configuration and the default on the selection seeds, confirm that choice on
unseen seeds that take no part in it, write the chosen configuration as a training
config. The method (model.method: clam, attention, dcam) only enters through ``methods.py``.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clam_dist import methods
from clam_dist.config import dumps_toml, load_config, to_dict
from clam_dist.logs import log_event
from clam_dist.secrets import persistable
from clam_dist.tune.config import TuneJobConfig
from clam_dist.tune.methods import check_for_data, make_trial, model_sections, steps_of
from clam_dist.tune.space import (
    check_job_config,
    default_in_space,
    default_point,
    knobs,
    resolved_space,
    tune_domains,
)
from clam_dist.tune.trial import TrialData, split_sample

# Per-epoch metrics kept for every trial (those a method does not report stay None).
_REPORTED = ("silhouette", "silhouette_latent", "heldout_loss", "train_loss", "n_nonempty", "beta")


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

    source = VectorSource.from_config(d.url, d)
    x = sample_rows(source, d.sample, config.run.seed).x.astype(np.float64)
    if d.standardize:
        # Global statistics, as the training job standardises with them.
        stats = feature_stats(source)
        x = (x - stats.mean) / np.where(stats.std > 0, stats.std, 1.0)
    return LoadedData(x.astype(np.float32), config.model.n_clusters, str(d.url))


def _trainable(point: dict, data: TrialData, config_dict: dict, k: int, threads: int) -> None:
    """Runs inside a Tune trial actor: one report per epoch (ASHA's time unit)."""
    import torch
    from ray import tune

    from clam_dist.config import from_dict

    torch.set_num_threads(threads)  # stay within the CPUs the trial reserved
    config = from_dict(TuneJobConfig, config_dict)
    trial = make_trial(config, data, k, point)
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
    method = config.model.method
    default = default_point(method)
    points = (
        [dict(default)]
        if config.run.include_default and default_in_space(config.search, method)
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
        param_space=tune_domains(config.search, method),
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
        method=method,
        trials=b.num_samples + len(points),
        cluster_cpus=ray.cluster_resources().get("CPU"),
    )
    grid = tuner.fit()
    records = []
    for i, result in enumerate(grid):
        if result.error is not None:
            log_event("trial_error", trial=i, error=str(result.error).splitlines()[0])
            continue
        point = {key: result.config[key] for key in knobs(method)}
        last = {key: result.metrics.get(key) for key in (metric, *_REPORTED)}
        rec = {
            "trial": i,
            "trial_dir": result.path,
            "point": point,
            "steps": steps_of(config, point),
            "epochs": int(result.metrics.get("training_iteration", 0)),
            "is_default": point == default,
            "last": last,
        }
        records.append(rec)
        log_event("trial_done", trial=i, epochs=rec["epochs"], score=last[metric], **point)
    if not records:
        raise RuntimeError(f"every one of {len(grid)} trials failed; see {grid.experiment_path}")
    return records


def _abs_storage(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def pick_finalists(
    records: list[dict], metric: str, mode: str, max_epochs: int, n: int
) -> list[dict]:
    """The ``n`` best searched (non-default) trials: ranked first by how far ASHA let them
    run (its own verdict: a trial promoted to a later rung beat its peers at the earlier
    one), then by last score. Survivors of the whole budget come first; trials stopped
    early only fill in when fewer than ``n`` survived."""
    sign = 1.0 if mode == "max" else -1.0
    searched = [r for r in records if not r["is_default"] and r["last"][metric] is not None]
    searched.sort(
        key=lambda r: (min(r["epochs"], max_epochs), sign * r["last"][metric]), reverse=True
    )
    return searched[:n]


def final_seeds(config: TuneJobConfig) -> tuple[list[int], list[int]]:
    """(selection seeds, confirmation seeds): fresh seeds, never the search's, and disjoint,
    so the confirmed figure carries no selection bias (the search picked its finalists on
    one seed's luck, the selection picks the best finalist and chooses between it and the
    default on its seeds' luck; the confirmation seeds only measure that choice)."""
    first = config.run.seed + 1
    n_sel, n_conf = config.score.final_seeds, config.score.confirm_seeds
    return (
        list(range(first, first + n_sel)),
        list(range(first + n_sel, first + n_sel + n_conf)),
    )


def final_run(
    config_dict: dict, data: TrialData, x_all: np.ndarray, k: int, point: dict, seed: int
) -> dict:
    """Train one configuration for the full budget with one seed (init, batch order, masks)
    and score it on the trials' rows, plus Silhouette on every loaded row. Runs as a Ray
    task with the trials' CPU count and thread count.

    A run that diverges on this seed (non-finite loss) scores the criterion's worst value
    instead of failing the job: a configuration that is unstable on unseen seeds must
    lose the selection, not end it."""
    import torch

    from clam_dist.config import from_dict
    from clam_dist.metrics import silhouette

    config = from_dict(TuneJobConfig, config_dict)
    # The trials' thread count: a different BLAS split changes float sums, and training
    # at a large lr can amplify that into a different result.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(config.budget.cpus_per_trial)))
    try:
        trial = make_trial(config, data, k, point, seed=seed)
        for _ in range(config.budget.max_epochs):
            metrics = trial.step()
        labels = trial.predict(x_all)
    except FloatingPointError as exc:
        worst = {"silhouette": -1.0, "heldout_loss": float("inf")}
        return dict(worst, silhouette_all_rows=-1.0, n_nonempty=0, beta=None,
                    beta_default=None, steps=steps_of(config, point), seed=seed,
                    diverged=str(exc))  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    metrics["silhouette_all_rows"] = float(
        silhouette(x_all, labels, sample_size=10_000, seed=seed, metric=trial.silhouette_metric)
    )
    metrics["beta_default"] = float(trial.beta_default)
    metrics["steps"] = trial.steps
    metrics["seed"] = seed
    return metrics


def _aggregate(runs: list[dict], metric: str) -> dict:
    """Mean over seeds of the scores (and of beta: the data-derived default depends on the
    k-means init), the spread, the smallest number of non-empty clusters, every run."""

    def mean(key: str) -> float | None:
        values = [r[key] for r in runs if r.get(key) is not None]
        return float(np.mean(values)) if values else None

    keys = (metric, "silhouette", "silhouette_latent", "heldout_loss", "silhouette_all_rows")
    out = {key: mean(key) for key in keys}
    per_seed_keys = ("seed", metric, "silhouette_all_rows", "n_nonempty", "beta_default")
    out.update(
        {
            f"{metric}_std": float(np.std([r[metric] for r in runs])),
            "beta": mean("beta"),
            "beta_default": mean("beta_default"),
            "steps": runs[0].get("steps"),
            "n_nonempty": min(int(r["n_nonempty"]) for r in runs),
            "diverged_seeds": [r["seed"] for r in runs if "diverged" in r],
            "per_seed": [{key: r.get(key) for key in per_seed_keys} for r in runs],
        }
    )
    return out


def _paired(fin: dict, default: dict, metric: str, mode: str) -> dict:
    """Per-seed differences against the default (same seed = same init, batch order and
    masks): the seed explains most of a score's spread, so a paired gain is the honest
    measure of what the knobs changed. Positive = better, whatever the mode."""
    sign = 1.0 if mode == "max" else -1.0
    gains = np.array(
        [
            sign * (a[metric] - b[metric])
            for a, b in zip(fin["per_seed"], default["per_seed"], strict=True)
        ]
    )
    stderr = float(gains.std(ddof=1) / np.sqrt(gains.size)) if gains.size > 1 else None
    return {
        "gain_vs_default": float(gains.mean()),
        "gain_stderr": stderr,
        "gain_vs_default_per_seed": gains.tolist(),
        "seeds_better_than_default": int((gains > 0).sum()),
    }


def final_compare(
    config: TuneJobConfig,
    data: TrialData,
    x_all: np.ndarray,
    k: int,
    points: list[dict],
    seeds: list[int],
) -> list[dict]:
    """Every point re-trained with every seed, in parallel Ray tasks; one aggregated
    record per point (in the order given)."""
    import ray

    task = ray.remote(num_cpus=config.budget.cpus_per_trial)(final_run)
    refs = [ray.put(v) for v in (to_dict(config), data, x_all)]
    futures = [[task.remote(*refs, k, p, s) for s in seeds] for p in points]
    metric, _ = _metric_mode(config)
    return [_aggregate(ray.get(f), metric) for f in futures]


# final_compare with the job's data bound: (points, seeds) -> one aggregate per point.
Compare = Callable[[list[dict], list[int]], list[dict]]


@dataclass
class Selection:
    """The choice between the best searched configuration and the default, made on the
    selection seeds, and its confirmation on seeds that took no part in it."""

    finalist_finals: list[dict]  # per finalist, selection seeds (with paired gains)
    default_select: dict  # the default, selection seeds
    best: dict | None  # the best finalist's trial record (None: no finalist)
    best_select: dict  # its selection-seed figures (the default's when None)
    search_wins: bool  # decided on the selection seeds only
    best_confirm: dict  # the best finalist, confirmation seeds (the default's when None)
    default_confirm: dict  # the default, confirmation seeds
    default_point: dict
    confirm_seeds: list[int]

    @property
    def chosen_point(self) -> dict:
        return self.best["point"] if self.search_wins and self.best else self.default_point

    @property
    def chosen_select(self) -> dict:
        return self.best_select if self.search_wins else self.default_select

    @property
    def chosen_confirm(self) -> dict:
        return self.best_confirm if self.search_wins else self.default_confirm

    def confirmation(self, metric: str, mode: str) -> dict:
        """The chosen configuration against the default on the unseen seeds. ``holds``
        may be False: the choice is not remade there, the figure is reported as it is."""
        sign = 1.0 if mode == "max" else -1.0
        chosen, default = self.chosen_confirm[metric], self.default_confirm[metric]
        return {
            "seeds": self.confirm_seeds,
            "chosen": chosen,
            "default": default,
            "gain_vs_default": sign * (chosen - default),
            "holds": _better(chosen, default, mode),
        }


def select_and_confirm(
    finalists: list[dict],
    default_pt: dict,
    compare: Compare,
    select_seeds: list[int],
    confirm_seeds: list[int],
    metric: str,
    mode: str,
) -> Selection:
    """1. Selection seeds: the finalists and the default re-trained; the best finalist by
    mean replaces the default when at least as good there. 2. Confirmation seeds (disjoint,
    never the search's): the best finalist and the default re-trained once the choice is
    fixed, so those seeds only measure it (choosing on them would make "chosen >= default"
    hold there by construction)."""
    if set(select_seeds) & set(confirm_seeds):
        raise ValueError(f"selection seeds {select_seeds} overlap confirmation {confirm_seeds}")
    checked = compare([r["point"] for r in finalists] + [default_pt], select_seeds)
    default_select, finalist_finals = checked[-1], checked[:-1]
    for rec, fin in zip(finalists, finalist_finals, strict=True):
        fin.update(_paired(fin, default_select, metric, mode))
        log_event(
            "finalist",
            trial=rec["trial"],
            score=fin[metric],
            gain_vs_default=fin["gain_vs_default"],
            seeds_better_than_default=fin["seeds_better_than_default"],
            seeds=select_seeds,
        )
    sign = 1.0 if mode == "max" else -1.0
    best_i = max(
        range(len(finalists)), key=lambda i: sign * finalist_finals[i][metric], default=None
    )
    best = finalists[best_i] if best_i is not None else None
    best_select = finalist_finals[best_i] if best_i is not None else default_select
    # The choice, on the selection seeds; nothing below may change it.
    search_wins = best is not None and _better(best_select[metric], default_select[metric], mode)
    if best is not None:
        best_confirm, default_confirm = compare([best["point"], default_pt], confirm_seeds)
        best_confirm.update(_paired(best_confirm, default_confirm, metric, mode))
    else:  # every searched trial failed or scored nothing
        (default_confirm,) = compare([default_pt], confirm_seeds)
        best_confirm = default_confirm
    sel = Selection(
        finalist_finals, default_select, best, best_select, search_wins,
        best_confirm, default_confirm, default_pt, confirm_seeds,
    )  # fmt: skip
    log_event(
        "confirmed",
        trial=best["trial"] if best else None,
        chosen="search" if search_wins else "default",
        chosen_on=select_seeds,
        score=best_confirm[metric],
        default=default_confirm[metric],
        gain_vs_default=best_confirm.get("gain_vs_default"),
        gain_stderr=best_confirm.get("gain_stderr"),
        seeds=confirm_seeds,
        holds=sel.confirmation(metric, mode)["holds"],
    )
    return sel


def train_config_text(
    config: TuneJobConfig, k: int, point: dict, final: dict, header: list[str]
) -> str:
    """The chosen configuration as TrainConfig TOML. Only the fields the search decided are
    written; every other field keeps the training job's default. The caller reads the file
    back with ``load_config(TrainConfig, ...)``."""
    m, d = config.model, config.data
    data: dict = {"standardize": d.standardize}
    if d.url:
        # storage_options are left out on purpose: they may hold credentials.
        data.update(url=d.url, vector_column=d.vector_column, feature_columns=d.feature_columns)
    optim = {
        "lr": float(point["lr"]),
        "epochs": config.budget.max_epochs,
        "batch_size": m.batch_size,
        "schedule": "plateau",  # the schedule the trials ran with
    }
    body = {"data": data, **model_sections(config, k, point, final), "optim": optim}
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
    default_pt = default_point(config.model.method)

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
    check_for_data(config, int(loaded.x.shape[1]))
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
    select_seeds, confirm_seeds = final_seeds(config)
    finalists = pick_finalists(
        records, metric, mode, config.budget.max_epochs, config.score.finalists
    )

    def compare(points: list[dict], seeds: list[int]) -> list[dict]:
        return final_compare(config, data, loaded.x, k, points, seeds)

    sel = select_and_confirm(
        finalists, default_pt, compare, select_seeds, confirm_seeds, metric, mode
    )
    timings["final_check"] = time.perf_counter() - t0
    out = Path(config.run.output)
    search_wins, best, chosen_point = sel.search_wins, sel.best, sel.chosen_point
    # What is written depends on the selection seeds only (beta is their mean), so the
    # confirmation seeds measure the written configuration without having shaped it.
    chosen = sel.chosen_select
    best_final, default_final = sel.best_confirm, sel.default_confirm
    header = [
        f"written by `clam-dist tune` ({config.run.name}, {config.model.method}) on "
        f"{loaded.source}, k={k}",
        f"criterion {metric} ({mode}); chosen on selection seeds {select_seeds}: "
        f"chosen {chosen[metric]:.4f}, default {sel.default_select[metric]:.4f}",
        f"confirmed on unseen seeds {confirm_seeds} (no part in the choice): chosen "
        f"{sel.chosen_confirm[metric]:.4f}, default {default_final[metric]:.4f}",
        f"chosen = {'searched configuration' if search_wins else 'default configuration'}; "
        f"beta = {chosen_point['beta_scale']:.3g} x data-derived "
        f"{chosen['beta_default'] if chosen['beta_default'] is not None else float('nan'):.4g}"
        + methods.get(config.model.method).tune.score_note,
    ]
    text = train_config_text(config, k, chosen_point, chosen, header)
    _write_atomic(out, text)
    load_config(TrainConfig, out)  # what the training job will do: fail here, not there
    summary = {
        "status": "succeeded",
        "source": loaded.source,
        "method": config.model.method,
        "k": k,
        "criterion": {"metric": metric, "mode": mode},
        "config": persistable(to_dict(config)),  # storage_options may hold credentials
        # the ranges searched, unset knobs resolved to the method's defaults
        "search_space": resolved_space(config.search, config.model.method),
        "trials": records,
        "best_trial": best["trial"] if best is not None else None,
        "final": {
            "select_seeds": select_seeds,
            "confirm_seeds": confirm_seeds,
            # on the selection seeds: the finalists, the default, and the choice
            "finalists": [
                {"trial": r["trial"], "point": r["point"], **f}
                for r, f in zip(finalists, sel.finalist_finals, strict=True)
            ],
            "default_select": {"point": default_pt, **sel.default_select},
            "choice": {
                "seeds": select_seeds,
                "search_best": {
                    "trial": best["trial"] if best else None,
                    "point": best["point"] if best else default_pt,
                    **sel.best_select,
                },
                "chosen": "search" if search_wins else "default",
            },
            # on the confirmation seeds, which took no part in the choice: the figures to
            # report (no selection bias)
            "search_best": {
                "trial": best["trial"] if best else None,
                "point": best["point"] if best else default_pt,
                **best_final,
            },
            "default": {"point": default_pt, **default_final},
            "confirmation": sel.confirmation(metric, mode),
        },
        "chosen": "search" if search_wins else "default",
        "chosen_on": "select_seeds",
        # the choice held on the unseen seeds: chosen at least as good as the default there
        "confirmed": sel.confirmation(metric, mode)["holds"],
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
