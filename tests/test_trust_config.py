"""A config is checked whole before any work (issue 24, B4, B6, B7), judged from the user's
seat: every command runs as a real subprocess (tests/cli_harness.py).

- B6: every field declares its constraints beside it (clam_dist.config: ``knob``,
  ``Interval``, ``PathSegment``, ``Each``); a value outside them is refused while the
  config is read: exit 2, one line naming the dotted field, nothing written, no Ray.
- B4: ``run.name`` is one folder name: ``../../esc``, ``/abs``, ``a/b``, ``..`` are refused
  and nothing is written inside or outside ``run.storage_path``.
- B7: a value of the wrong shape (``data.storage_options=abc``), a file whose top level is
  not a mapping, and a file that does not parse are one line naming the field or the
  file (and its line), exit 2.

The refusing commands get RAY_ADDRESS at a port where nothing listens: a command that
reached for Ray before checking its config would fail to connect instead.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest
from cli_harness import no_ray_env, run_cli

from clam_dist.assign.pipeline import AssignConfig
from clam_dist.config import (
    ConfigError,
    Each,
    Interval,
    PathSegment,
    check_constraints,
    from_dict,
    knob,
    load_config,
    read_mapping,
)
from clam_dist.data.writer import write_vectors
from clam_dist.datasets.synthetic import make_gaussian_mixture
from clam_dist.evaluate.run import EvaluateConfig
from clam_dist.pipeline.config import PipelineConfig
from clam_dist.train.config import TrainConfig
from clam_dist.tune.config import TuneJobConfig, TuneSearch

# The command's own time (the job_done record's, after the interpreter and its imports): a
# refusal is the config's check; the work it used to start first (200k generated rows and a
# Ray cluster for the pipeline) took ~35 s.
NO_WORK_S = 10.0


def refused(*args, work: Path, needles: tuple[str, ...]) -> str:
    """Run ``clam-dist ARGS`` in ``work``: exit 2, one line on stderr naming ``needles``,
    no Ray, no time spent working, and nothing written in ``work``."""
    before = files_under(work)
    events = work.parent / "events.jsonl"  # outside the folder that must stay untouched
    r = run_cli(*args, "--log-file", events, cwd=work, env=no_ray_env(), timeout=300)
    assert r.code == 2, r.describe()
    line = r.one_line(*needles)
    r.no_ray_lines()
    done = [e for e in map(json.loads, events.read_text().splitlines()) if e["event"] == "job_done"]
    assert done and done[-1]["seconds"] < NO_WORK_S, f"{done}\n{r.describe()}"
    assert files_under(work) == before, "something was written"
    return line


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def work(tmp_path) -> Path:
    """The folder a command runs in (relative defaults such as runs/ land here)."""
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A small real Parquet data set: with it, a command not refused would do real work."""
    root = tmp_path_factory.mktemp("config-data") / "in"
    x, y, _ = make_gaussian_mixture(300, 4, 3, seed=0)
    write_vectors(str(root), x, labels=y, rows_per_file=100)
    return root


# -- B6: bad values refused before any work ------------------------------------------------

PIPELINE_BAD = [
    ("model.n_clusters=0", "model.n_clusters", ">= 1"),
    ("model.n_clusters=-3", "model.n_clusters", ">= 1"),
    ("model.n_clusters=1e9", "model.n_clusters", "<= 16777216"),
    ("optim.lr=-1", "optim.lr", "> 0"),
    ("train.num_workers=0", "train.num_workers", ">= 1"),
    ("optim.epochs=0", "optim.epochs", ">= 1"),
]


@pytest.mark.parametrize("override, field, bound", PIPELINE_BAD)
def test_pipeline_refuses_a_bad_value_before_any_work(work, override, field, bound):
    run_dir = work / "run"
    line = refused(
        "pipeline", "--run-dir", run_dir, "--set", override, work=work, needles=(field, bound)
    )
    assert line.count(field) == 1, line
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=nan", "optim.lr must be a finite number > 0, got nan"),
        ("optim.lr=1e30", None),  # diverges in training (TrainingDiverged), a real run's lesson
        ("model.mask_ratio=1", "model.mask_ratio must be in [0, 1), got 1.0"),
        ("model.alpha=1.5", "model.alpha must be in (0, 1], got 1.5"),
        ("optim.plateau_factor=1", "optim.plateau_factor must be in (0, 1), got 1.0"),
        ("data.n=0", "data.n must be >= 1, got 0"),
        ("data.separation=0", "data.separation must be > 0, got 0.0"),
        ("dcam.hidden=[8,0]", "dcam.hidden[1] must be >= 1, got 0"),
        ("eval_sample=1", "eval_sample must be >= 2, got 1"),
        ("seed=-1", "seed must be >= 0, got -1"),
        ("assign.concurrency=0", "assign.concurrency must be >= 1, got 0"),
    ],
)
def test_more_pipeline_fields_are_bounded(override, message):
    """In process (the subprocess tests above show the path to the one line)."""
    if message is None:
        load_config(PipelineConfig, None, [override])
        return
    with pytest.raises(ConfigError) as info:
        load_config(PipelineConfig, None, [override])
    assert str(info.value) == message


@pytest.mark.parametrize(
    "args, field",
    [
        (["--k", "0"], "model.n_clusters"),
        (["--set", "optim.epochs=0"], "optim.epochs"),  # once ended with "no model.json"
        (["--workers", "0"], "run.num_workers"),
    ],
)
def test_train_refuses_a_bad_value_before_any_work(work, data_dir, args, field):
    store = f"run.storage_path={work / 'store'}"
    refused("train", "--data", data_dir, "--set", store, *args, work=work, needles=(field,))


@pytest.mark.parametrize(
    "override, field",
    [
        ("batch_size=-1", "batch_size"),
        ("num_gpus_per_actor=inf", "num_gpus_per_actor"),
        ("storage_options=abc", "storage_options"),
    ],
)
def test_assign_refuses_a_bad_value_before_any_work(work, data_dir, override, field):
    refused(
        "assign", "--input", data_dir, "--model", work / "model", "--output", work / "out",
        "--set", override, work=work, needles=(field,),
    )  # fmt: skip


def test_evaluate_refuses_a_bad_seed_before_any_work(work, data_dir):
    refused(
        "evaluate", "--input", data_dir, "--assignments", work / "a", "--model", work / "m",
        "--report-dir", work / "report", "--set", "seed=-1", work=work, needles=("seed", ">= 0"),
    )  # fmt: skip


# -- B4: run.name is a name ------------------------------------------------------------------


# ABS: an absolute path inside the test's folder (so a failing test writes nowhere else)
@pytest.mark.parametrize("name", ["../../esc", "..", "ABS"])
def test_train_run_name_that_is_not_one_folder_is_refused(work, data_dir, name):
    name = str(work / "abs") if name == "ABS" else name
    refused(
        "train", "--data", data_dir, "--k", "3", "--set", f"run.storage_path={work / 's' / 't'}",
        "--set", f"run.name={name}", "--set", "optim.epochs=1", work=work, needles=("run.name",),
    )  # fmt: skip
    assert files_under(work.parent) == ["events.jsonl", "work"], "written outside"


def test_tune_run_name_that_is_not_one_folder_is_refused(work):
    refused(
        "tune", "--dataset", "ecoli", "--set", f"run.storage_path={work / 's' / 't'}",
        "--set", "run.name=../../esc", work=work, needles=("run.name",),
    )  # fmt: skip


@pytest.mark.parametrize(
    "name", ["../../esc", "..", ".", "", " ", "a/b", "a\\b", "/abs", "tab\there", "x" * 256]
)
def test_names_that_are_not_one_folder(name):
    with pytest.raises(ConfigError, match=r"^run\.name must be a plain name, one folder"):
        load_config(TrainConfig, None, [f"run.name={name}"])
    with pytest.raises(ConfigError, match=r"^run\.name must be a plain name, one folder"):
        load_config(TuneJobConfig, None, [f"run.name={name}"])


@pytest.mark.parametrize("name", ["clam-train", "run 1", "a..b", "date=2026-05-01", "ü"])
def test_plain_names_stay_valid(name):
    assert load_config(TrainConfig, None, [f"run.name={name}"]).run.name == name


# -- B7: values and files of the wrong shape --------------------------------------------------


def test_storage_options_that_are_not_a_mapping_are_refused(work):
    line = refused(
        "pipeline", "--run-dir", work / "run", "--set", "data.storage_options=abc",
        work=work, needles=("data.storage_options", "mapping"),
    )  # fmt: skip
    assert "abc" not in line  # the type, not the value: it may be a mistyped secret


@pytest.mark.parametrize(
    "name, text, kind",
    [
        ("config.json", "[1, 2]", "list"),
        ("config.yaml", "- model\n- optim\n", "list"),
        ("config.yaml", "just words\n", "a string"),
    ],
)
def test_a_config_file_whose_top_level_is_not_a_mapping_is_refused(work, name, text, kind):
    path = work / name
    path.write_text(text)
    refused(  # with an override too: merging one into a list once crashed
        "pipeline", "--config", path, "--run-dir", work / "run", "--set", "model.n_clusters=4",
        work=work, needles=(f"{path}: top level must be a mapping, got {kind}",),
    )  # fmt: skip


@pytest.mark.parametrize(
    "name, text, line",
    [
        ("bad.yaml", "model:\n  n_clusters: 4\n  beta: [1,\n  alpha: : 2\n", 4),
        ("bad.yaml", "model:\n  n_clusters: 4\n method: clam\n", 3),
        ("bad.toml", "[model]\nn_clusters = 4\nbeta = \n", 3),
        ("bad.json", '{"model": {\n  "n_clusters": 4,\n}}\n', 3),
    ],
)
def test_a_config_file_that_does_not_parse_names_its_line(work, name, text, line):
    path = work / name
    path.write_text(text)
    refused(
        "pipeline", "--config", path, "--run-dir", work / "run",
        work=work, needles=(f"{path}, line {line}: cannot parse",),
    )  # fmt: skip


# -- the mechanism itself (in process, fast) -------------------------------------------------


@dataclasses.dataclass
class Knobs:
    k: int = knob(3, Interval(int, 1, 100))
    ratio: float = knob(0.2, Interval(float, 0, 1, "left"))
    rate: float = knob(0.1, Interval(float, 0, None, "neither"))
    factor: float = knob(0.5, Interval(float, 0, 1, "right"))
    name: str = knob("x", PathSegment())
    sizes: list[int] | None = knob(None, Each(Interval(int, 1)))
    options: dict | None = None
    free: int = 0


@pytest.mark.parametrize(
    "data, message",
    [
        ({"k": 0}, "k must be >= 1, got 0"),
        ({"k": 101}, "k must be <= 100, got 101"),
        ({"k": 1e9}, "k must be <= 100, got 1000000000"),
        ({"ratio": 1}, "ratio must be in [0, 1), got 1.0"),
        ({"ratio": -0.1}, "ratio must be in [0, 1), got -0.1"),
        ({"ratio": "nan"}, "ratio must be a finite number in [0, 1), got nan"),
        ({"rate": 0}, "rate must be > 0, got 0.0"),
        ({"rate": "inf"}, "rate must be a finite number > 0, got inf"),
        ({"factor": 0}, "factor must be in (0, 1], got 0.0"),
        ({"name": "../x"}, "name must be a plain name, one folder (no '/' or '\\'), got '../x'"),
        ({"name": ".."}, "name must be a plain name, one folder (not '.' or '..'), got '..'"),
        ({"name": "a\x07"}, "control characters"),
        ({"name": "n" * 256}, "at most 255 characters"),
        ({"sizes": [4, 0]}, "sizes[1] must be >= 1, got 0"),
        ({"options": "abc"}, "options: expected a mapping, got a string"),
        ({"options": [1]}, "options: expected a mapping, got list"),
        ({1: 2}, "field names are strings"),
    ],
)
def test_a_value_outside_its_declared_constraint_is_refused(data, message):
    with pytest.raises(ConfigError) as info:
        from_dict(Knobs, data, prefix="")
    assert message in str(info.value)


def test_values_inside_the_constraints_and_unset_optionals_pass():
    ok = from_dict(Knobs, {"k": 100, "ratio": 0, "factor": 1, "sizes": [1, 2], "free": -5})
    assert (ok.k, ok.ratio, ok.factor, ok.sizes, ok.free) == (100, 0.0, 1.0, [1, 2], -5)
    nested = from_dict(Knobs, {"name": "run-1", "options": {"a": 1}}, prefix="sec")
    assert nested.options == {"a": 1}
    with pytest.raises(ConfigError, match=r"^sec\.k must be >= 1"):
        from_dict(Knobs, {"k": 0}, prefix="sec")


def test_configs_built_in_code_are_checked_too():
    with pytest.raises(ConfigError, match="concurrency must be >= 1, got 0"):
        AssignConfig(input="i", output="o", model="m", concurrency=0)
    with pytest.raises(ConfigError, match="sample_size must be >= 2, got 1"):
        EvaluateConfig(input="i", assignments="a", model="m", report_dir="r", sample_size=1)
    config = TrainConfig()
    config.model.n_clusters = 0
    with pytest.raises(ConfigError, match=r"^model\.n_clusters must be >= 1, got 0$"):
        check_constraints(config)


ROOTS = (PipelineConfig, TrainConfig, TuneJobConfig, AssignConfig, EvaluateConfig)


def _sections(cls: type, seen: dict[type, None]) -> dict[type, None]:
    seen.setdefault(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]) and hints[f.name] not in seen:
            _sections(hints[f.name], seen)
    return seen


def _numbers(hint) -> bool:
    return hint in (int, float) or any(a in (int, float) for a in typing.get_args(hint))


def test_every_numeric_field_declares_its_constraint():
    # TuneSearch holds [low, high] ranges, checked as ranges by tune.space (before work).
    undeclared = [
        f"{cls.__name__}.{f.name}"
        for root in ROOTS
        for cls in _sections(root, {})
        if cls is not TuneSearch
        for f in dataclasses.fields(cls)
        if _numbers(typing.get_type_hints(cls)[f.name]) and not f.metadata
    ]
    assert undeclared == []


def test_every_default_obeys_its_own_constraint():
    for config in (PipelineConfig(), TrainConfig(), TuneJobConfig()):
        check_constraints(config)
    AssignConfig(input="i", output="o", model="m")
    EvaluateConfig(input="i", assignments="a", model="m", report_dir="r")


def test_read_mapping_reports_the_file_and_line(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("a: 1\n  b: 2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml, line 2: cannot parse YAML: mapping values"):
        read_mapping(bad)
    (tmp_path / "empty.yaml").write_text("")
    assert read_mapping(tmp_path / "empty.yaml") == {}
    folder = tmp_path / "d.toml"
    folder.mkdir()
    with pytest.raises(ConfigError, match="a folder, not a config file"):
        read_mapping(folder)


def test_an_override_without_a_field_name_is_refused():
    with pytest.raises(ConfigError, match="names no field"):
        load_config(PipelineConfig, None, ["=3"])
