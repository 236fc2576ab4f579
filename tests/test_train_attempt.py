"""The pipeline's train stage resumes a crashed attempt's checkpoints, never an old
run's: --fresh, --from-stage and a changed config each start a new checkpoint folder
(Ray Train restores any run whose folder holds a checkpoint)."""

from __future__ import annotations

import dataclasses

from clam_dist.pipeline.config import PipelineConfig, PipelineData
from clam_dist.pipeline.stages import Run, train_attempt
from clam_dist.sections import ModelSection


def test_same_inputs_resume_and_reruns_or_changes_start_a_new_folder(tmp_path):
    config = PipelineConfig(
        run_dir=str(tmp_path / "run"),
        data=PipelineData(n=600, d=4, k=3, rows_per_file=200),
        model=ModelSection(n_clusters=3),
    )
    run = Run(config)
    assert train_attempt(run) == "train"
    (run.dir / "checkpoints" / "train").mkdir()  # what Ray Train writes
    assert train_attempt(Run(config)) == "train"  # a crash retry resumes its own run

    fresh = Run(config)
    fresh.rerun_requested.add("train")  # --fresh / --from-stage train
    assert train_attempt(fresh) == "train-2"
    (run.dir / "checkpoints" / "train-2").mkdir()
    assert train_attempt(Run(config)) == "train-2"

    changed = dataclasses.replace(config, model=ModelSection(n_clusters=4))
    assert train_attempt(Run(changed)) == "train-3"
    # The old folders stay where they were: superseded, never deleted.
    assert (run.dir / "checkpoints" / "train").is_dir()
    assert (run.dir / "checkpoints" / "train-2").is_dir()
