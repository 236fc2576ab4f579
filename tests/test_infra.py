"""infra/ manifests: parse, carry the required fields, name paths that exist, and agree
with pyproject.toml. Each broken-copy case shows the checker can fail."""

from __future__ import annotations

import importlib.util
import json
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
    # per-partition schedules: the schedule's date, never the clock; run_partition's four options
    "partition_cron_without_date": ("infra/cron/clam-dist-partition.cron", 'submit_partition.sh "$(date -u -d yesterday +\\%F)"', "submit_partition.sh", "gets no date argument"),
    "partition_cron_fire_time": ("infra/cron/clam-dist-partition.cron", "date -u -d yesterday +", "date -u +", "must be a -d date"),
    "partition_cron_unescaped_percent": ("infra/cron/clam-dist-partition.cron", "+\\%F", "+%F", "unescaped %"),
    "partition_cron_other_script": ("infra/cron/clam-dist-partition.cron", 'infra/cron/submit_partition.sh "$(date', 'infra/cron/submit_pipeline.sh "$(date', "does not call infra/cron/submit_partition.sh"),
    "partition_script_reads_clock": ("infra/cron/submit_partition.sh", 'key="${1:-}"', 'key="${1:-$(date -u +%F)}"', "reads the clock"),
    "partition_script_without_option": ("infra/cron/submit_partition.sh", '--partition "$key" ', "", "called without --partition"),
    "partition_rayjob_without_option": ("infra/kuberay/rayjob-partition.yaml", " --registry s3://my-bucket/registry", "", "called without --registry"),
    "partition_rayjob_fixed_input": ("infra/kuberay/rayjob-partition.yaml", "dt={partition} --config", "dt=latest --config", "does not hold {partition}"),
    "partition_rayjob_fixed_key": ("infra/kuberay/rayjob-partition.yaml", "--partition {partition} ", "--partition 2026-12-02 ", "--partition {partition}"),
    "cronjob_pod_clock": ("infra/kuberay/cronjob-partition.yaml", 'date -u -d "${scheduled:0:10} -1 day" +%F', "date -u +%F", "reads the pod's clock"),
    "cronjob_pod_clock_relative": ("infra/kuberay/cronjob-partition.yaml", 'date -u -d "${scheduled:0:10} -1 day" +%F', "date -u -d yesterday +%F", "reads the pod's clock"),
    "cronjob_no_annotation": ("infra/kuberay/cronjob-partition.yaml", "annotations.batch\\.kubernetes\\.io/cronjob-scheduled-timestamp", "metadata.creationTimestamp", "cronjob-scheduled-timestamp annotation"),
    "cronjob_cannot_get_its_job": ("infra/kuberay/cronjob-partition.yaml", 'resources: ["jobs"]', 'resources: ["pods"]', "get on batch jobs"),
    "cronjob_unfilled_rayjob": ("infra/kuberay/cronjob-partition.yaml", 'sed "s/{partition}/$partition/g" /manifests/rayjob-partition.yaml | kubectl create -f -', "kubectl create -f /manifests/rayjob-partition.yaml", "fill {partition}"),
    "cronjob_creates_pipeline_rayjob": ("infra/kuberay/cronjob-partition.yaml", "/manifests/rayjob-partition.yaml |", "/manifests/rayjob-pipeline.yaml |", "does not run jobs/run_partition.py"),
    "dag_without_ds": ("infra/airflow/clam_dist_partition_dag.py", "submit_partition.sh {{ ds }}", "submit_partition.sh {{ ts }}", "must get {{ ds }}"),
    "dag_without_catchup": ("infra/airflow/clam_dist_partition_dag.py", "catchup=True,", "catchup=False,", "catchup=True"),
    "dag_parallel_runs": ("infra/airflow/clam_dist_partition_dag.py", "max_active_runs=1,", "max_active_runs=4,", "max_active_runs=1"),
    "dag_other_script": ("infra/airflow/clam_dist_partition_dag.py", "infra/cron/submit_partition.sh {{ ds }}", "infra/cron/submit_pipeline.sh", "no BashOperator calls"),
    "dag_unguarded_import": ("infra/airflow/clam_dist_partition_dag.py", "import os\n", "import os\n\nfrom airflow import DAG\n", "imported unguarded"),
    "dag_syntax": ("infra/airflow/clam_dist_partition_dag.py", "catchup=True,", "catchup=True,,", "does not parse"),
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


def test_a_non_executable_partition_script_is_reported(repo_copy):
    os.chmod(repo_copy / "infra/cron/submit_partition.sh", 0o644)
    problems = V.check_all(repo_copy)
    assert any("submit_partition.sh is not executable" in p for p in problems), problems
    assert any("clam_dist_partition_dag.py" in p and "not executable" in p for p in problems)


def test_a_missing_run_partition_job_is_reported(repo_copy):
    (repo_copy / "jobs/run_partition.py").unlink()
    problems = V.check_all(repo_copy)
    for rel in ("submit_partition.sh", "rayjob-partition.yaml", "cronjob-partition.yaml"):
        assert any(rel in p and "does not exist" in p for p in problems), (rel, problems)


def test_run_partition_job_script_calls_the_cli_command():
    text = (REPO / "jobs/run_partition.py").read_text()
    assert 'main(["run-partition", *sys.argv[1:]])' in text and "sys.exit(" in text


def test_airflow_dag_imports_without_airflow():
    if importlib.util.find_spec("airflow") is not None:
        pytest.skip("Airflow is installed here")
    spec = importlib.util.spec_from_file_location(
        "clam_dist_partition_dag", REPO / "infra/airflow/clam_dist_partition_dag.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # no ImportError: the airflow imports are guarded
    assert module.DAG is None and not hasattr(module, "dag")


# ---------------------------------------------------------------- submit_partition.sh

PARTITION_SCRIPT = REPO / "infra/cron/submit_partition.sh"
FAKE_RAY = """#!{python}
# Stand-in for the `ray` CLI (no cluster here): records its argv, one JSON list a line.
import json, os, sys
with open(os.environ["FAKE_RAY_CALLS"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:3] == ["job", "status"]:
    print(os.environ["FAKE_RAY_STATUS"])
sys.exit(int(os.environ["FAKE_RAY_SUBMIT_RC"]) if sys.argv[1:3] == ["job", "submit"] else 0)
"""


def _run_partition_script(
    tmp_path: Path, *args: str, status="Job 'x' succeeded", submit_rc=0, **extra_env: str
):
    """submit_partition.sh with a fake `ray` first on PATH; (result, ray calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    ray = bin_dir / "ray"
    ray.write_text(FAKE_RAY.format(python=sys.executable))
    ray.chmod(0o755)
    python = bin_dir / "python"
    if not python.exists():
        python.symlink_to(sys.executable)  # the script's `python` is this interpreter
    calls = tmp_path / "ray_calls.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "CLAM_DIST_"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        RAY_ADDRESS="http://head.invalid:8265",
        CLAM_DIST_REGISTRY="s3://bucket/registry",
        CLAM_DIST_MODEL_NAME="events",
        CLAM_DIST_INPUT_TEMPLATE="s3://bucket/events/dt={partition}",
        CLAM_DIST_SUMMARY_DIR=str(tmp_path / "summaries"),
        FAKE_RAY_CALLS=str(calls),
        FAKE_RAY_STATUS=status,
        FAKE_RAY_SUBMIT_RC=str(submit_rc),
    )
    env.update(extra_env)
    out = subprocess.run(
        [str(PARTITION_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120
    )
    lines = calls.read_text().splitlines() if calls.exists() else []
    return out, [json.loads(line) for line in lines]


def test_partition_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(PARTITION_SCRIPT)], check=True)


@pytest.mark.parametrize(
    "args",
    [(), ("../x",), ("2026-12-02/x",), ("2026-12-2",), ("2026-13-01",), ("",), ("--set",)],
    ids=["missing", "dotdot", "slash", "short", "not_a_day", "empty", "option"],
)
def test_partition_script_refuses_a_bad_key_before_calling_ray(tmp_path, args):
    out, calls = _run_partition_script(tmp_path, *args)
    assert out.returncode == 2, out
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "partition key" in out.stderr and out.stdout == ""
    assert calls == [] and not (tmp_path / "ray_calls.jsonl").exists()


@pytest.mark.parametrize(
    "env, message",
    [
        ({"CLAM_DIST_INPUT_TEMPLATE": "s3://bucket/events/latest"}, "has no {partition}"),
        ({"CLAM_DIST_REGISTRY": ""}, "set CLAM_DIST_REGISTRY"),
        ({"RAY_ADDRESS": ""}, "set RAY_ADDRESS"),
    ],
)
def test_partition_script_refuses_a_missing_setting(tmp_path, env, message):
    out, calls = _run_partition_script(tmp_path, "2026-12-02", **env)
    assert out.returncode == 2 and message in out.stderr, out
    assert len(out.stderr.strip().splitlines()) == 1 and calls == []


def test_partition_script_submits_run_partition_with_the_key(tmp_path):
    extra = ["--set", "model.n_clusters=8", "--reapply-champion"]
    if importlib.util.find_spec("clam_dist.registry.config") is not None:
        extra += ["--set", "drift.threshold=0.05"]  # run-partition's own config sections
    out, calls = _run_partition_script(tmp_path, "2026-12-02", *extra)
    assert out.returncode == 0, out.stderr
    submits = [c for c in calls if c[:2] == ["job", "submit"]]
    assert len(submits) == 1, calls
    argv = submits[0]
    entry = argv[argv.index("--") + 1 :]
    assert entry[:2] == ["python", "jobs/run_partition.py"]
    pairs = list(zip(entry, entry[1:]))
    assert ("--partition", "2026-12-02") in pairs
    assert ("--input", "s3://bucket/events/dt=2026-12-02") in pairs
    assert ("--registry", "s3://bucket/registry") in pairs and ("--name", "events") in pairs
    assert ("--summary", str(tmp_path / "summaries/partition-2026-12-02.json")) in pairs
    assert entry[-len(extra) :] == extra  # the job's own options, passed on as given
    assert (
        "--runtime-env" in argv
        and argv[argv.index("--runtime-env") + 1] == "infra/runtime_env.yaml"
    )
    sid = argv[argv.index("--submission-id") + 1]
    assert sid.startswith("clam-partition-2026-12-02-")
    assert ["job", "status", "--address", "http://head.invalid:8265", sid] in calls
    assert '"state": "succeeded", "exit_code": 0' in out.stdout


def test_partition_script_exits_with_the_jobs_exit_code(tmp_path):
    status = (
        "Job 'x' failed\nStatus message: Job entrypoint command failed with exit code 2, "
        "last available logs (truncated to 20,000 chars):\nstage train succeeded\nexit code 7"
    )
    out, calls = _run_partition_script(tmp_path, "2026-12-02", status=status, submit_rc=1)
    assert out.returncode == 2, out
    out, _ = _run_partition_script(
        tmp_path, "2026-12-03", status="Job 'x' was stopped", submit_rc=1
    )
    assert out.returncode == 1, out


def test_partition_script_refuses_a_config_that_does_not_validate(tmp_path):
    out, calls = _run_partition_script(tmp_path, "2026-12-02", "--set", "model.n_clusters=many")
    assert out.returncode == 2 and "config error" in out.stderr, out
    assert calls == []


def test_partition_pattern_can_be_overridden_but_never_allows_a_path(tmp_path):
    weeks = {"CLAM_DIST_PARTITION_PATTERN": "^[0-9]{4}-W[0-9]{2}$"}
    out, calls = _run_partition_script(tmp_path, "2026-W49", **weeks)
    assert out.returncode == 0, out.stderr
    entry = calls[0][calls[0].index("--") + 1 :]
    assert ("--partition", "2026-W49") in list(zip(entry, entry[1:]))
    anything = {"CLAM_DIST_PARTITION_PATTERN": ".*"}
    for key in ("../x", "a/b", "-x", "a b"):
        out, calls = _run_partition_script(tmp_path / key.replace("/", "_"), key, **anything)
        assert out.returncode == 2 and "not one path segment" in out.stderr, (key, out)
        assert calls == []


# ---------------------------------------------------------------- the CronJob's command


def _cronjob_command() -> str:
    docs = yaml.safe_load_all((REPO / "infra/kuberay/cronjob-partition.yaml").read_text())
    cron = next(d for d in docs if d and d.get("kind") == "CronJob")
    command = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["/bin/bash", "-c"]
    return command[2]


FAKE_KUBECTL = """#!/usr/bin/env bash
# Stand-in for kubectl (no cluster here): `get job` prints $SCHEDULED, `create -f -` keeps stdin.
echo "$*" >> "$KUBECTL_CALLS"
if [[ "$1" == get ]]; then printf '%s' "$SCHEDULED"; exit 0; fi
cat > "$CREATED"
"""


@pytest.mark.parametrize(
    "scheduled, partition",
    [
        ("2026-12-03T03:15:00Z", "2026-12-02"),
        ("2027-01-01T03:15:00Z", "2026-12-31"),
        ("2028-03-01T03:15:00+01:00", "2028-02-29"),  # a CronJob timeZone: its own calendar day
        ("", None),  # no annotation (Kubernetes < 1.28, a hand-made Job): refuse, never guess
    ],
)
def test_cronjob_derives_the_partition_from_the_scheduled_timestamp(tmp_path, scheduled, partition):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text(FAKE_KUBECTL)
    (bin_dir / "kubectl").chmod(0o755)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    shutil.copy(REPO / "infra/kuberay/rayjob-partition.yaml", manifests)
    script = _cronjob_command().replace("/manifests/", f"{manifests}/")
    created = tmp_path / "created.yaml"
    env = dict(
        os.environ,
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        JOB_NAME="clam-dist-partition-29412345",
        NAMESPACE="batch",
        SCHEDULED=scheduled,
        KUBECTL_CALLS=str(tmp_path / "calls"),
        CREATED=str(created),
    )
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    calls = (tmp_path / "calls").read_text()
    assert "get job clam-dist-partition-29412345 -n batch" in calls
    if partition is None:
        assert out.returncode == 2 and not created.exists(), out
        return
    assert out.returncode == 0, out.stderr
    job = yaml.safe_load(created.read_text())
    entry = job["spec"]["entrypoint"]
    assert f"--partition {partition} " in entry and f"dt={partition} " in entry
    assert "{partition}" not in created.read_text()
    assert job["metadata"]["labels"]["clam-dist/partition"] == partition


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
