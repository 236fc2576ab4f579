"""infra/ manifests: parse, carry the required fields, name paths that exist, and agree
with pyproject.toml. Each broken-copy case shows the checker can fail."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _load_validator():
    spec = importlib.util.spec_from_file_location("infra_validate", REPO / "infra/validate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


V = _load_validator()


def test_every_manifest_in_the_repo_is_valid():
    assert V.check_all(REPO) == []


def test_every_yaml_file_parses_and_readme_names_each_manifest():
    files = sorted(REPO.glob("infra/**/*.yaml"))
    assert len(files) >= 5
    for path in files:
        assert [d for d in yaml.safe_load_all(path.read_text()) if d], path
    readme = (REPO / "infra/README.md").read_text()
    for rel in list(V.CHECKS) + ["infra/runtime_env.yaml", "infra/cron/submit_pipeline.sh"]:
        assert rel.removeprefix("infra/") in readme, f"infra/README.md does not explain {rel}"


def test_submit_script_is_valid_bash_and_uses_the_documented_command():
    script = REPO / "infra/cron/submit_pipeline.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "ray job submit" in text and "--runtime-env infra/runtime_env.yaml" in text
    assert "--working-dir ." in text and "jobs/pipeline.py" in text


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """The files the checks read, copied so a test can break one."""
    for name in ("infra", "jobs"):
        shutil.copytree(REPO / name, tmp_path / name)
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    (tmp_path / "README.md").write_text("")
    (tmp_path / "clam_dist").mkdir()
    assert V.check_all(tmp_path) == []  # the copy is valid before a test breaks it
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


BREAKS = {
    "entrypoint_missing": (
        "infra/kuberay/rayjob-pipeline.yaml",
        "jobs/pipeline.py",
        "jobs/pipline.py",
        "does not exist in the repo",
    ),
    "ray_version_in_image": (
        "infra/kuberay/raycluster.yaml",
        "ray2.60.0-py311-gpu",
        "ray2.59.0-py311-gpu",
        "has Ray 2.59.0",
    ),
    "project_version_in_image": (
        "infra/cluster/aws.yaml",
        "clam-dist:0.1.0-",
        "clam-dist:0.0.9-",
        "not pyproject's version",
    ),
    "rayversion_field": (
        "infra/kuberay/rayjob-pipeline.yaml",
        'rayVersion: "2.60.0"',
        'rayVersion: "2.50.0"',
        "rayVersion 2.50.0",
    ),
    "pin_outside_pyproject": (
        "infra/requirements-cluster.txt",
        "torch==2.13.0",
        "torch==2.20.0",
        "outside pyproject",
    ),
    "pin_missing": ("infra/requirements-cluster.txt", "scipy==", "# scipy==", "no pin for"),
    "dockerfile_torch": ("infra/docker/Dockerfile", '"torch==2.13.0"', '"torch"', "torch==2.13.0"),
    "no_autoscaling": ("infra/cluster/aws.yaml", "max_workers: 8\n    resources", "max_workers: 0\n    resources", "does not autoscale"),
    "gpu_head": ("infra/cluster/aws.yaml", '{"CPU": 0}', '{"CPU": 0, "GPU": 1}', "CPU node"),
    "cronjob_wrong_manifest": (
        "infra/kuberay/cronjob-pipeline.yaml",
        "/manifests/rayjob-pipeline.yaml",
        "/manifests/rayjob.yaml",
        "not in kuberay/",
    ),
    "cron_names_missing_script": ("infra/cron/clam-dist.cron", "submit_pipeline.sh", "submit.sh", "does not exist"),
    "missing_field": ("infra/kuberay/rayjob-pipeline.yaml", "  entrypoint:", "  entry_point:", "required field spec.entrypoint"),
    "yaml_broken": ("infra/kuberay/raycluster.yaml", "kind: RayCluster", "kind: [RayCluster", "does not parse"),
    "env_working_dir": ("infra/runtime_env.yaml", 'working_dir: "."', 'working_dir: "no_such_dir"', "not a directory"),
    "env_pip_file": ("infra/runtime_env.yaml", "env_vars:", 'pip: ["-r requirements-gone.txt"]\nenv_vars:', "does not exist"),
    "env_secret": ("infra/runtime_env.yaml", 'PYTHONUNBUFFERED: "1"', 'PYTHONUNBUFFERED: "1"\n  AWS_SECRET_ACCESS_KEY: "x"', "looks like a secret"),
    "env_unknown_key": ("infra/runtime_env.yaml", "excludes:", "exclude_files: []\nexcludes:", "unknown key"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_a_broken_manifest_is_reported(repo_copy, case):
    rel, old, new, expected = BREAKS[case]
    _edit(repo_copy / rel, old, new)
    problems = V.check_all(repo_copy)
    assert any(expected in p for p in problems), problems


def test_a_non_executable_submit_script_is_reported(repo_copy):
    os.chmod(repo_copy / "infra/cron/submit_pipeline.sh", 0o644)
    assert any("not executable" in p for p in V.check_all(repo_copy))


def test_runtime_env_cli_names_the_missing_file(tmp_path):
    env = tmp_path / "env.yaml"
    env.write_text("working_dir: .\npy_modules: [gone_module]\n")
    out = subprocess.run(
        [sys.executable, str(REPO / "infra/validate.py"), "runtime-env", str(env)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "py_modules entry 'gone_module' does not exist" in out.stderr
    out = subprocess.run(
        [sys.executable, str(REPO / "infra/validate.py"), "runtime-env", str(tmp_path / "no.yaml")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "runtime env file not found" in out.stderr


def test_pipeline_config_check_fails_before_submission():
    cmd = [sys.executable, str(REPO / "infra/validate.py"), "pipeline-config"]
    bad = subprocess.run([*cmd, "--set", "model.n_clusters=many"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "config error: model.n_clusters: expected an integer" in bad.stderr
    good = subprocess.run([*cmd, "--set", "model.n_clusters=4"], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
