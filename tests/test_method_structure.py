"""One package per method, dependencies one way, one default per knob (issue 25), read
from the code's AST and from the entry points' signatures; no import runs a method's
training here."""

from __future__ import annotations

import ast
import inspect
from dataclasses import fields

import pytest
import structure_scan as scan

from clam_dist import methods
from clam_dist.config import load_config


def _method_and_phase_names() -> set[str]:
    """Every method's name, its phases and the Tune knobs only it has."""
    specs = [methods.get(n) for n in methods.names()]
    own_knobs = {k for s in specs if s.tune is not None for k in s.tune.own_knobs}
    return set(methods.names()) | {p for s in specs for p in s.phases} | own_knobs


# -- the structure --------------------------------------------------------------------------


def test_no_import_loops_inside_the_package():
    assert scan.relative_imports() == []  # the graph reads absolute imports
    assert scan.cycles(scan.import_graph()) == []


def test_generic_code_imports_the_registry_and_the_spec_only():
    assert scan.method_package_imports(scan.import_graph()) == []


def test_no_literal_outside_methods_names_a_method_or_a_phase():
    names = _method_and_phase_names()
    assert {"dcam", "pretrain", "similarity", "recon_weight"} <= names  # the scan's reach
    offenders = scan.literal_offenders(names)
    assert offenders == [], "method knowledge outside clam_dist/methods: " + ", ".join(offenders)


def test_every_method_is_one_package_with_the_same_rooms():
    for name in methods.names():
        folder = scan.PACKAGE / "methods" / name
        assert (folder / "__init__.py").is_file() and (folder / "hooks.py").is_file(), name
        spec = methods.get(name)
        assert spec.hooks.target.startswith(f"clam_dist.methods.{name}.")
        assert spec.estimator.target.startswith(f"clam_dist.methods.{name}.")


# -- the scans find what they look for --------------------------------------------------------


def _literals(code: str) -> list[tuple[int, str]]:
    return scan.named_literals(ast.parse(code), {"dcam", "kmeans", "pretrain"})


def test_the_literal_scan_sees_match_aliases_and_dict_dispatch():
    code = (
        "match cfg.model.method:\n"  # 1
        "    case 'dcam':\n"  # 2
        "        pass\n"
        "kind = cfg.model.method\n"
        "if kind == 'kmeans': pass\n"  # 5
        "handlers = {'dcam': f}\n"  # 6
        "handlers[cfg.model.method]()\n"
        "if phase != 'pretrain': pass\n"  # 8
        "run(method='kmeans')\n"  # 9
    )
    assert _literals(code) == [
        (2, "dcam"),
        (5, "kmeans"),
        (6, "dcam"),
        (8, "pretrain"),
        (9, "kmeans"),
    ]


def test_the_init_strategy_kmeans_is_the_one_exception():
    code = (
        "init: Literal['kmeans', 'kmeans++'] = 'kmeans'\n"
        "if cfg.model.init == 'kmeans': pass\n"
        "Estimator(init='kmeans')\n"
        "def f(x, init='kmeans'): pass\n"
        "init_prototypes(x, k, 'kmeans', gen)\n"
        "if cfg.model.method == 'kmeans': pass\n"  # 6: the method, not a strategy
        "f(x, 'kmeans')\n"  # 7: no init in sight
        "init = {'dcam': 1}\n"  # 8: only 'kmeans' is exempt
    )
    assert _literals(code) == [(6, "kmeans"), (7, "kmeans"), (8, "dcam")]


def test_the_graph_scan_finds_a_loop_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "clam_dist"
    (pkg / "methods" / "toy").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "methods" / "__init__.py").write_text("")
    (pkg / "methods" / "toy" / "__init__.py").write_text("import clam_dist.train\n")
    (pkg / "train.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import clam_dist.other\n"
        "def f():\n    from clam_dist.methods.toy import SPEC\n"
    )
    (pkg / "other.py").write_text("import clam_dist.train\n")
    graph = scan.import_graph(pkg)
    assert scan.cycles(graph) == [["clam_dist.methods.toy", "clam_dist.train"]]
    assert scan.method_package_imports(graph) == ["clam_dist.train -> clam_dist.methods.toy"]


# -- one default per knob ---------------------------------------------------------------------


def _default(fn, name: str):
    return inspect.signature(fn).parameters[name].default


@pytest.mark.parametrize("name", ["clam", "kmeans", "attention", "dcam"])
def test_every_entry_point_takes_the_methods_defaults(name):
    from clam_dist.pipeline.config import PipelineConfig
    from clam_dist.train.config import TrainConfig

    spec = methods.get(name)
    defaults = spec.defaults
    estimator = spec.estimator.load()
    assert _default(estimator.__init__, "n_clusters") == defaults.n_clusters
    if "lr" in inspect.signature(estimator.__init__).parameters:
        assert _default(estimator.__init__, "lr") == defaults.lr
    if "standardize" in inspect.signature(estimator.__init__).parameters:
        assert _default(estimator.__init__, "standardize") == defaults.standardize
    for job in (TrainConfig, PipelineConfig):
        cfg = load_config(job, None, [f"model.method={name}"])
        assert cfg.optim.lr == defaults.lr, job.__name__
        assert cfg.data.standardize == defaults.standardize, job.__name__
        given = load_config(job, None, [f"model.method={name}", "data.standardize=false"])
        assert given.data.standardize is False  # a choice given by the user is kept
        # a rate given by the user is kept
        assert load_config(job, None, [f"model.method={name}", "optim.lr=0.2"]).optim.lr == 0.2
    if spec.tune is not None:
        assert spec.tune.default_point["lr"] == defaults.lr


def test_the_in_memory_fits_and_trials_take_their_methods_lr():
    from clam_dist.methods.attention.model import fit_attention
    from clam_dist.methods.attention.trial import AttentionParams
    from clam_dist.methods.clam.fit import ClAMConfig
    from clam_dist.methods.clam.trial import TrialParams
    from clam_dist.methods.dcam.model import DCAMConfig
    from clam_dist.methods.dcam.trial import DCAMParams

    def field_default(cls, knob):
        return next(f.default for f in fields(cls) if f.name == knob)

    lr = {n: methods.get(n).defaults.lr for n in methods.names()}
    assert field_default(ClAMConfig, "lr") == field_default(TrialParams, "lr") == lr["clam"]
    assert _default(fit_attention, "lr") == field_default(AttentionParams, "lr") == lr["attention"]
    assert field_default(DCAMConfig, "lr") == field_default(DCAMParams, "lr") == lr["dcam"]
    assert len(set(lr.values())) > 1  # the methods' own: not one shared number


# A knob of a method's section whose in-memory estimator default differs on purpose.
IN_MEMORY_DIFFERS = {
    # KMeans holds every row and runs Lloyd; the trainer streams them (mini-batch), where
    # Lloyd is one centre update per epoch.
    ("kmeans", "algorithm"),
}


@pytest.mark.parametrize("name", ["kmeans", "attention", "dcam"])
def test_a_methods_own_knobs_live_in_its_section_with_one_default(name):
    from clam_dist.sections import ModelSection
    from clam_dist.train.config import TrainConfig

    spec = methods.get(name)
    own = {f.name: f.default for f in fields(spec.section)}
    assert own, "a section with no knob"
    # none of them is also a field of the shared [model] section
    assert not set(own) & {f.name for f in fields(ModelSection)}
    # the job configs carry the section under the method's name, with its defaults
    assert {k: getattr(getattr(TrainConfig(), name), k) for k in own} == own
    # the estimator and Tune's default point take the section's defaults
    estimator = inspect.signature(spec.estimator.load().__init__).parameters
    shared = [k for k in own if k in estimator and (name, k) not in IN_MEMORY_DIFFERS]
    assert {k: estimator[k].default for k in shared} == {k: own[k] for k in shared}
    point = spec.tune.default_point if spec.tune is not None else {}
    assert {k: point[k] for k in own if k in point} == {k: own[k] for k in own if k in point}


def test_the_methods_own_knobs_are_refused_at_their_old_place():
    from clam_dist.config import ConfigError
    from clam_dist.train.config import TrainConfig

    for old, new in (
        ("model.similarity=dot", "attention.similarity"),
        ("model.kmeans_algorithm=lloyd", "kmeans.algorithm"),
    ):
        with pytest.raises(ConfigError, match=f"moved to {new}"):
            load_config(TrainConfig, None, [old])
    cfg = load_config(TrainConfig, None, ["attention.similarity=dot", "kmeans.algorithm=lloyd"])
    assert (cfg.attention.similarity, cfg.kmeans.algorithm) == ("dot", "lloyd")
