"""Job configs are built from the shared sections (clam_dist/sections.py): each shared
knob is declared once, the pipeline's sections ARE the training job's, and an old
pipeline key is refused with the name it moved to."""

from __future__ import annotations

import dataclasses

import pytest

from clam_dist import sections
from clam_dist.assign.pipeline import AssignConfig
from clam_dist.config import ConfigError, load_config
from clam_dist.evaluate.run import EvaluateConfig
from clam_dist.methods.dcam.config import DCAMSection
from clam_dist.pipeline.config import PipelineConfig
from clam_dist.train.config import TrainConfig
from clam_dist.tune.config import TuneJobConfig, TuneModel, TuneSearch

SHARED = (
    sections.SourceColumns,
    sections.ModelSection,
    sections.OptimSection,
    DCAMSection,
    sections.WorkersSection,
    sections.OutputsSection,
)


def _config_classes(cls: type, seen: set) -> None:
    if cls in seen:
        return
    seen.add(cls)
    for f in dataclasses.fields(cls):
        if isinstance(f.type, type) and dataclasses.is_dataclass(f.type):
            _config_classes(f.type, seen)
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            if dataclasses.is_dataclass(value):
                _config_classes(type(value), seen)


def test_every_shared_knob_is_declared_once():
    shared = {f.name: s.__name__ for s in SHARED for f in dataclasses.fields(s)}
    classes: set = set()
    for root in (TrainConfig, PipelineConfig, AssignConfig, EvaluateConfig, TuneJobConfig):
        _config_classes(root, classes)
    # Tune's [model] (k = 0: the bundled data set's classes; a small per-trial batch) and
    # [search] (ranges, not values) describe a search, not one run (docs/design.md, 8).
    search_only = {TuneModel, TuneSearch}
    redeclared = [
        f"{cls.__name__}.{name} (declared in {shared[name]})"
        for cls in classes
        if cls not in SHARED and cls not in search_only
        for name in vars(cls).get("__annotations__", {})
        if name in shared and not name.isupper()
    ]
    assert redeclared == []
    assert len(classes) > len(SHARED)  # the walk reached the job sections


def test_pipeline_and_training_job_share_their_sections():
    train, pipe = TrainConfig(), PipelineConfig()
    for name in ("model", "optim", "dcam"):
        assert type(getattr(train, name)) is type(getattr(pipe, name))
    assert isinstance(pipe.data, type(train.data))  # the pipeline's [data] extends it
    assert isinstance(pipe.train, sections.WorkersSection)
    assert isinstance(train.run, sections.WorkersSection)
    assert isinstance(AssignConfig(input="i", output="o", model="m"), sections.OutputsSection)
    assert pipe.assign.outputs == AssignConfig(input="i", output="o", model="m").outputs


@pytest.mark.parametrize("old,new", sorted(PipelineConfig.MOVED_FIELDS.items()))
def test_a_moved_pipeline_key_is_refused_with_its_new_name(old, new):
    with pytest.raises(ConfigError, match=f"{old}: moved to {new}"):
        load_config(PipelineConfig, None, [f"{old}=1"])


def test_moved_keys_exist_where_they_went():
    config = PipelineConfig()
    for new in PipelineConfig.MOVED_FIELDS.values():
        section, name = new.split(".")
        assert hasattr(getattr(config, section), name), new


def test_the_cli_names_the_new_place(tmp_path, capsys):
    from clam_dist.cli import main

    code = main(["pipeline", "--run-dir", str(tmp_path / "r"), "--set", "model.epochs=2"])
    assert code == 2
    assert "model.epochs: moved to optim.epochs" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before any work


def test_tune_refuses_a_fixed_recon_weight_in_its_dcam_section():
    with pytest.raises(ConfigError, match="search.recon_weight"):
        from clam_dist.methods.dcam.hooks import check_dcam

        check_dcam(DCAMSection(recon_weight=2.0))
