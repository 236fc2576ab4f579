"""The method registry is the only place that knows methods by name: the trainer, the
pipeline, the predictor, Tune and the CLI ask it (issue: one place per method)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from clam_dist import methods
from clam_dist.config import ConfigError, load_config

PACKAGE = Path(__file__).resolve().parents[1] / "clam_dist"
# Modules that may name methods: the method packages and the registry, and the artifact
# inspector (it prints whatever an artifact records).
ALLOWED = {"methods", "commands/inspect.py"}


def _allowed(path: Path) -> bool:
    rel = path.relative_to(PACKAGE).as_posix()
    return any(rel == a or rel.startswith(a + "/") for a in ALLOWED)


def _method_comparisons(tree: ast.AST) -> list[int]:
    """Lines comparing something to a method name (==, !=, in / not in a literal)."""
    names = set(methods.names())
    hits = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        for op, right in zip(node.ops, node.comparators):
            operands = [node.left, right]
            literals = []
            for o in operands:
                if isinstance(o, ast.Constant):
                    literals.append(o.value)
                elif isinstance(o, ast.Tuple | ast.List | ast.Set):
                    literals += [e.value for e in o.elts if isinstance(e, ast.Constant)]
            # the other side names a method (cfg.model.method, art.method, method, ...);
            # "kmeans" is also an init strategy's name (model.init), which is no branch
            subject = " ".join(ast.unparse(o) for o in operands if not isinstance(o, ast.Constant))
            if (
                isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn)
                and "method" in subject.lower()
                and names & {v for v in literals if isinstance(v, str)}
            ):
                hits.append(node.lineno)
    return hits


def test_no_module_outside_the_registry_branches_on_a_method_name():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if _allowed(path):
            continue
        for line in _method_comparisons(ast.parse(path.read_text())):
            offenders.append(f"{path.relative_to(PACKAGE)}:{line}")
    assert offenders == [], "branch on a method name outside clam_dist/methods: " + ", ".join(
        offenders
    )


def test_the_scan_finds_a_branch_when_there_is_one():
    tree = ast.parse(
        'if cfg.model.method == "dcam":\n    pass\nif method in ("kmeans", "x"): pass\n'
        'if cfg.model.init == "kmeans": pass\n'
    )
    assert _method_comparisons(tree) == [1, 3]  # the init strategy "kmeans" is no method


def test_every_method_registers_under_its_name_with_the_hooks_the_trainer_needs():
    assert methods.names() == ("clam", "kmeans", "attention", "dcam")
    for name in methods.names():
        spec = methods.get(name)
        assert spec.name == name and spec.summary
        hooks = spec.load_hooks()
        assert callable(hooks.make_objective) and callable(hooks.fit_on_sample)
    tunable = [n for n in methods.names() if methods.get(n).tune is not None]
    assert tunable == ["clam", "attention", "dcam"]


def test_configs_accept_registered_methods_only():
    from clam_dist.pipeline.config import PipelineConfig
    from clam_dist.train.config import TrainConfig

    assert load_config(TrainConfig, None, ["model.method=dcam"]).model.method == "dcam"
    with pytest.raises(ConfigError, match=r"model.method: expected one of \['clam'"):
        load_config(TrainConfig, None, ["model.method=spectral"])
    with pytest.raises(ConfigError, match="model.method: expected one of"):
        load_config(PipelineConfig, None, ["model.method=spectral"])
    with pytest.raises(ValueError, match="unknown method 'spectral'"):
        methods.get("spectral")


def test_artifacts_say_how_they_assign_through_their_method():
    import numpy as np

    from clam_dist.artifacts import ModelArtifact

    def art(method, **meta):
        return ModelArtifact(method, np.eye(2, dtype=np.float32), 2, 1.0, 0.1, 3, "euclidean",
                             meta=meta)  # fmt: skip

    assert art("clam").assignment_rule == "am"
    assert art("kmeans").assignment_rule == "nearest"
    assert art("attention").assignment_rule == "nearest"
    assert art("attention", score="dot").assignment_rule == "dot"
    assert art("clam").encoder() is None
