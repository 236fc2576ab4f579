"""The end of a pipeline run in one place: what summary.json's ``overview`` holds and the
table `clam-dist pipeline` prints from it (the same fields, so a script and a person read
the same numbers)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from clam_dist.pipeline.stages import Run

# Metrics shown when the evaluate stage measured them (NMI/ARI/acc need a label column).
METRIC_KEYS = ("nmi", "ari", "acc", "mean_energy", "size_min", "size_max")


def overview(run: Run, summary: dict) -> dict[str, Any]:
    """The run's headline numbers and paths (absent stages give None, never an error:
    this is written even when a stage failed)."""
    stages = summary.get("stages", {})
    metrics = stages.get("evaluate", {}).get("metrics", {})
    assign = stages.get("assign", {})
    ok = summary.get("status") == "succeeded"
    return {
        "status": summary.get("status"),
        "exit_code": 0 if ok else 1,
        "rows": metrics.get("rows", assign.get("rows", stages.get("data", {}).get("rows"))),
        "k": metrics.get("k", run.config.model.n_clusters),
        "n_nonempty": metrics.get("n_nonempty"),
        "silhouette": metrics.get("silhouette"),
        "silhouette_sample_size": metrics.get("silhouette_sample_size"),
        **{key: metrics[key] for key in METRIC_KEYS if key in metrics},
        "drift_share": assign.get("drift_share_above_train_energy_p99"),
        "seconds": summary.get("seconds"),
        # every stage's own seconds, also those a resumed run skipped (their marker's)
        "stage_seconds": {name: rec.get("seconds") for name, rec in stages.items()},
        "skipped": [name for name, rec in stages.items() if rec.get("skipped")],
        "paths": {
            "run_dir": run.store.url,
            "model": run.model_url if "train" in stages else None,
            "assignments": run.assignments_url if "assign" in stages else None,
            "report": stages.get("evaluate", {}).get("report"),
            "events": run.events_url,
            "summary": run.store.url_of("summary.json"),
        },
    }


def _value(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def print_table(ov: dict, out: TextIO, error: str | None = None) -> None:
    """The summary table. Its last line (``summary: ... status: ...``) and the ``stage
    NAME  SECONDS`` lines keep the format scripts and tests grep for."""
    rows: list[tuple[str, str]] = [("rows", _value(ov.get("rows"))), ("k", _value(ov.get("k")))]
    if ov.get("n_nonempty") is not None:
        rows.append(("non-empty clusters", _value(ov["n_nonempty"])))
    if ov.get("silhouette") is not None:
        sample = ov.get("silhouette_sample_size")
        rows.append(("silhouette", f"{_value(ov['silhouette'])} (sample of {_value(sample)})"))
    rows += [(key, _value(ov[key])) for key in METRIC_KEYS if key in ov]
    if ov.get("drift_share") is not None:
        rows.append(("drift share", f"{_value(ov['drift_share'])} (energy > training p99)"))
    print(f"\n{'clam-dist pipeline':28s} {ov.get('status')} (exit {ov.get('exit_code')})", file=out)
    for key, text in rows:
        print(f"{key:28s} {text}", file=out)
    for stage, seconds in ov.get("stage_seconds", {}).items():
        took = "skipped (done)" if stage in ov.get("skipped", []) else f"{seconds:.1f}s"
        print(f"stage {stage:9s} {took}", file=out)
    if ov.get("seconds") is not None:
        print(f"{'total':28s} {ov['seconds']:.1f}s", file=out)
    paths = ov.get("paths", {})
    for name in ("model", "assignments", "report", "events"):
        if paths.get(name):
            print(f"{name + ':':13s}{paths[name]}", file=out)
    if error:
        print(f"error: {error}", file=out)
    print(f"summary: {paths.get('summary')}  status: {ov.get('status')}", file=out, flush=True)
