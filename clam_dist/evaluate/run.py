"""`run_evaluation(config) -> EvalResult`: metrics JSON + report for committed assignments.

The typed config is what `clam-dist evaluate --config` reads (top-level keys) and what a
pipeline builds; no Ray is needed (one streamed pass over the output, one Dask sample).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from clam_dist.config import ConfigError, Interval, check_constraints, knob
from clam_dist.data.source import VectorSource
from clam_dist.data.urls import absolute
from clam_dist.evaluate.metrics_at_scale import EvalConfig, evaluate_run
from clam_dist.evaluate.report import write_report
from clam_dist.logs import log_event
from clam_dist.sections import SEED, SourceColumns


@dataclass
class EvaluateConfig(SourceColumns):
    """The shared column knobs (clam_dist/sections.py; ``label_column`` enables NMI/ARI/
    ACC) plus the evaluation's own."""

    input: str = ""  # the Parquet prefix that was assigned
    assignments: str = ""  # committed output of `clam-dist assign`
    model: str = ""  # model artifact directory
    report_dir: str = ""  # local folder or fsspec URL for metrics.json, PNGs, index.html
    # rows sampled for the Silhouette (stated in the output; it needs two)
    sample_size: int = knob(10_000, Interval(int, 2))
    seed: int = knob(0, SEED)
    title: str = "clam-dist run"
    kmeans_baseline: bool = True  # k-means fitted on the sample, reported beside the model
    # Other committed outputs of the same model (e.g. later partitions): drift share of each
    partitions: list[str] | None = None

    def __post_init__(self) -> None:
        for name in ("input", "assignments", "model", "report_dir"):
            if not getattr(self, name):
                raise ConfigError(f"{name}: required (a path or fsspec URL)")
            setattr(self, name, absolute(getattr(self, name)))
        check_constraints(self)  # built in code too (the pipeline's stage), not only read
        if self.vector_column is not None and self.feature_columns is not None:
            raise ConfigError("vector_column and feature_columns: give one, not both")
        if isinstance(self.partitions, str):
            self.partitions = [p.strip() for p in self.partitions.split(",") if p.strip()]
        self.partitions = [absolute(p) for p in self.partitions or []]

    def source(self) -> VectorSource:
        return VectorSource.from_config(self.input, self)


@dataclass
class EvalResult:
    metrics: dict
    report_dir: str
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # checks, sample, stream_pass, sample_metrics (see evaluate_run), report
    timings_s: dict = field(default_factory=dict)

    @property
    def index_html(self) -> str:
        return f"{self.report_dir.rstrip('/')}/index.html"


def run_evaluation(config: EvaluateConfig) -> EvalResult:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    log_event(
        "evaluate_start",
        input=config.input,
        assignments=config.assignments,
        model=config.model,
        report_dir=config.report_dir,
        storage_options=config.storage_options,
    )
    metrics, plots = evaluate_run(
        EvalConfig(
            config.source(),
            config.assignments,
            config.model,
            config.sample_size,
            config.seed,
            config.storage_options,
            kmeans_baseline=config.kmeans_baseline,
            partitions=config.partitions,
        ),
        timings=timings,
    )
    t1 = time.perf_counter()
    files = write_report(
        config.report_dir,
        metrics,
        plots,
        title=config.title,
        storage_options=config.storage_options,
    )
    timings["report"] = round(time.perf_counter() - t1, 3)
    result = EvalResult(metrics, config.report_dir, files, time.perf_counter() - t0, timings)
    log_event(
        "evaluate_done",
        rows=metrics.get("rows"),
        silhouette=metrics.get("silhouette"),
        report=result.index_html,
        seconds=round(result.seconds, 3),
        timings_s=timings,
    )
    return result
