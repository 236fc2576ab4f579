"""Check infra/ before anything is deployed or submitted (also run by tests/test_infra.py).

    python infra/validate.py                          # every manifest: exit 1 and a list of problems
    python infra/validate.py runtime-env infra/runtime_env.yaml
    python infra/validate.py pipeline-config [--config my.toml] [--set model.n_clusters=8 ...]
    python infra/validate.py partition-config [--config my.toml] [--set SECTION.FIELD=VALUE ...]

Checks: YAML parses; required fields; the scripts and paths manifests name exist in the
repo; images and pinned package versions agree with pyproject.toml; no secrets in env vars;
the per-partition schedules (cron, KubeRay CronJob, Airflow DAG) pass the SCHEDULE's date to
jobs/run_partition.py with --registry --name --partition --input, never the clock's.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
APP_DIR = "/home/ray/clam-dist"  # where the image holds the repo (infra/docker/Dockerfile)
PY_TAG = "py311"
OUR_IMAGE = re.compile(
    r"^(?:[\w.-]+/)*clam-dist:(?P<version>[\w.]+)-ray(?P<ray>[\w.]+)-(?P<py>py\d+)-(?P<flavor>cpu|gpu)$"
)
RAY_IMAGE = re.compile(r"^rayproject/ray:(?P<ray>[\d.]+)-(?P<py>py\d+)(?:-(?P<flavor>[\w${}]+))?$")
OTHER_IMAGES = re.compile(r"^bitnami/kubectl:\d+\.\d+(\.\d+)?$")
RUNTIME_ENV_KEYS = {
    "working_dir", "py_modules", "excludes", "env_vars", "pip", "uv", "conda",
    "py_executable", "config", "image_uri", "java_jars", "nsight",
}  # fmt: skip
SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|ACCESS_KEY|PRIVATE)", re.I)
# The options every per-partition schedule passes to jobs/run_partition.py.
PARTITION_JOB = "jobs/run_partition.py"
PARTITION_OPTIONS = ("--registry", "--name", "--partition", "--input")
PARTITION_SCRIPT = "infra/cron/submit_partition.sh"
# Set by the CronJob controller on each Job it creates (Kubernetes >= 1.28, beta and on by
# default; GA and always on from 1.32): the run's SCHEDULED time, RFC3339, in the CronJob's
# timeZone. Not on the pod: the pod reads it from its Job.
SCHEDULED_ANNOTATION = "batch.kubernetes.io/cronjob-scheduled-timestamp"
# `date` where a shell runs a command (line start, after ; & | ( or a backtick).
DATE_CALL = re.compile(r"(?:^|[;&|(`])\s*date\b(?P<args>[^;&|)`\n]*)", re.M)
RELATIVE_DATE = re.compile(r"\b(?:now|today|yesterday|tomorrow|ago)\b")


class InfraError(ValueError):
    """A manifest or runtime env that does not validate; the message names file and field."""


# ---------------------------------------------------------------- versions


def pyproject(repo: Path = REPO) -> dict:
    import tomllib

    return tomllib.loads((repo / "pyproject.toml").read_text())["project"]


def cluster_pins(repo: Path = REPO) -> dict[str, tuple[str, set[str]]]:
    """name -> (exact version, extras) from infra/requirements-cluster.txt."""
    from packaging.requirements import Requirement

    pins = {}
    for line in (repo / "infra/requirements-cluster.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            raise InfraError(f"requirements-cluster.txt: {line!r} must pin one exact version (==)")
        pins[req.name.lower()] = (specs[0].version, set(req.extras))
    return pins


def check_versions(repo: Path = REPO) -> list[str]:
    """Every pyproject dependency is pinned for the cluster, inside pyproject's range."""
    from packaging.requirements import Requirement

    problems = []
    pins = cluster_pins(repo)
    for dep in pyproject(repo)["dependencies"]:
        req = Requirement(dep)
        name = req.name.lower()
        if name not in pins:
            problems.append(f"requirements-cluster.txt: no pin for pyproject dependency {req.name}")
            continue
        version, extras = pins[name]
        if not req.specifier.contains(version, prereleases=True):
            problems.append(
                f"requirements-cluster.txt: {name}=={version} is outside pyproject's {req.specifier}"
            )
        if not req.extras <= extras:
            problems.append(
                f"requirements-cluster.txt: {name} lacks extras {sorted(req.extras - extras)}"
            )
    if "ray" in pins and "default" not in pins["ray"][1]:
        problems.append(
            "requirements-cluster.txt: ray needs the 'default' extra (dashboard, Jobs API)"
        )
    return problems


# ---------------------------------------------------------------- helpers


def load_yaml_docs(path: Path) -> list:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        raise InfraError(f"{path.name}: YAML does not parse: {exc}") from exc
    if not docs:
        raise InfraError(f"{path.name}: empty")
    return docs


def dig(doc, dotted: str, where: str):
    node = doc
    for key in dotted.split("."):
        if isinstance(node, list):
            node = node[int(key)] if key.isdigit() and int(key) < len(node) else None
        elif isinstance(node, dict):
            node = node.get(key)
        else:
            node = None
        if node is None:
            raise InfraError(f"{where}: required field {dotted} is missing")
    return node


def walk(node, key: str):
    """Every value stored under ``key`` anywhere in a nested document."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from walk(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v, key)


def repo_path(path: str, repo: Path) -> Path:
    """A path a manifest names, mapped to the repo (image paths live under APP_DIR)."""
    if path.startswith(APP_DIR + "/"):
        path = path[len(APP_DIR) + 1 :]
    return repo / path


def check_entrypoint(command: str, where: str, repo: Path) -> list[str]:
    scripts = re.findall(r"python3?\s+(?:-u\s+)?(\S+\.py)", command)
    if not scripts:
        return [f"{where}: entrypoint {command!r} runs no python script"]
    return [
        f"{where}: entrypoint names {s}, which does not exist in the repo"
        for s in scripts
        if not repo_path(s, repo).is_file()
    ]


def missing_options(command: str, options=PARTITION_OPTIONS) -> list[str]:
    """The options in ``options`` that ``command`` does not give a value."""
    return [
        o for o in options if not re.search(rf"(?:^|\s){re.escape(o)}(?:=|\s+)(?!-)\S", command)
    ]


def shell_code(text: str) -> str:
    """Shell text without comment lines, line continuations joined."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return re.sub(r"\\\n\s*", " ", "\n".join(lines))


def clock_reads(code: str, any_date: bool = False) -> list[str]:
    """`date` calls in shell code that read the clock: no -d/--date, or a relative -d
    (now, yesterday, ...). With ``any_date``, every `date` call."""
    calls = []
    for m in DATE_CALL.finditer(code):
        args = m["args"]
        if (
            any_date
            or not re.search(r"(?:^|\s)(?:-d|--date)(?:=|\s)", args)
            or RELATIVE_DATE.search(args)
        ):
            calls.append(("date" + args).strip())
    return calls


def check_partition_command(command: str, where: str, repo: Path) -> list[str]:
    """``command`` runs jobs/run_partition.py (which exists) with the four options."""
    if PARTITION_JOB not in command:
        return [f"{where}: does not run {PARTITION_JOB}"]
    problems = check_entrypoint(command, where, repo)
    missing = missing_options(command.split(PARTITION_JOB, 1)[1])
    if missing:
        problems.append(f"{where}: {PARTITION_JOB} is called without {' '.join(missing)}")
    return problems


def check_images(doc, where: str, repo: Path, want_gpu: bool = False) -> list[str]:
    problems, flavors = [], set()
    version = pyproject(repo)["version"]
    ray_pin = cluster_pins(repo)["ray"][0]
    for key in ("image", "head_image"):
        for image in walk(doc, key):
            m = OUR_IMAGE.match(str(image)) or RAY_IMAGE.match(str(image))
            if m is None:
                if not OTHER_IMAGES.match(str(image)):
                    problems.append(f"{where}: image {image!r} is not a pinned clam-dist/ray image")
                continue
            if m.groupdict().get("version") not in (None, version):
                problems.append(f"{where}: image {image} is not pyproject's version {version}")
            if m["ray"] != ray_pin:
                problems.append(f"{where}: image {image} has Ray {m['ray']}, pinned {ray_pin}")
            if m["py"] != PY_TAG:
                problems.append(f"{where}: image {image} is {m['py']}, expected {PY_TAG}")
            flavors.add(m["flavor"])
    if want_gpu and "gpu" not in flavors:
        problems.append(f"{where}: no GPU image for the GPU workers")
    for rv in walk(doc, "rayVersion"):
        if str(rv) != ray_pin:
            problems.append(f"{where}: rayVersion {rv} != pinned Ray {ray_pin}")
    return problems


# ---------------------------------------------------------------- per manifest


def check_runtime_env(path: str | Path, repo: Path = REPO) -> list[str]:
    """Problems with a runtime_env YAML: unknown keys, missing local files, secrets."""
    path = Path(path)
    if not path.is_file():
        return [f"runtime env file not found: {path}"]
    (env,) = load_yaml_docs(path)[:1]
    where = path.name
    if not isinstance(env, dict):
        return [f"{where}: expected a mapping, got {type(env).__name__}"]
    problems = [f"{where}: unknown key {k!r}" for k in sorted(set(env) - RUNTIME_ENV_KEYS)]

    def local(p) -> bool:
        return isinstance(p, str) and "://" not in p

    wd = env.get("working_dir")
    if local(wd) and not (repo / wd).is_dir():
        problems.append(f"{where}: working_dir {wd!r} is not a directory under {repo}")
    for mod in env.get("py_modules") or []:
        if local(mod) and not (repo / mod).exists():
            problems.append(f"{where}: py_modules entry {mod!r} does not exist")
    for key in ("pip", "uv", "conda"):
        spec = env.get(key)
        files = [spec] if isinstance(spec, str) else []
        if isinstance(spec, list):
            files = [
                s.split(None, 1)[1] for s in spec if isinstance(s, str) and s.startswith("-r ")
            ]
        elif isinstance(spec, dict) and isinstance(spec.get("packages"), str):
            files = [spec["packages"]]
        for f in files:
            if local(f) and not (repo / f).is_file():
                problems.append(f"{where}: {key} names {f!r}, which does not exist")
    excludes = env.get("excludes", [])
    if not isinstance(excludes, list) or not all(isinstance(e, str) for e in excludes):
        problems.append(f"{where}: excludes must be a list of patterns")
    for name, value in (env.get("env_vars") or {}).items():
        if not isinstance(value, str):
            problems.append(f"{where}: env_vars.{name} must be a string, got {value!r}")
        if SECRET_NAME.search(name):
            problems.append(
                f"{where}: env_vars.{name} looks like a secret; use the cloud role/secret store"
            )
    return problems


def check_aws(path: Path, repo: Path) -> list[str]:
    (doc,) = load_yaml_docs(path)
    w = path.name
    problems = []
    if dig(doc, "provider.type", w) != "aws":
        problems.append(f"{w}: provider.type must be aws")
    types = dig(doc, "available_node_types", w)
    head = types.get(dig(doc, "head_node_type", w))
    if head is None:
        return problems + [f"{w}: head_node_type is not one of available_node_types"]
    if dig(head, "resources", w).get("GPU", 0):
        problems.append(f"{w}: the head must be a CPU node")
    gpu_workers = [
        (n, t)
        for n, t in types.items()
        if t is not head and t.get("resources", {}).get("GPU", 0) > 0
    ]
    if not gpu_workers:
        problems.append(f"{w}: no GPU worker node type")
    for n, t in gpu_workers:
        if not t.get("max_workers", 0) > t.get("min_workers", 0):
            problems.append(f"{w}: worker type {n} does not autoscale (max_workers <= min_workers)")
    for cmd in dig(doc, "head_start_ray_commands", w):
        if "ray start --head" in cmd and "--dashboard-host" not in cmd:
            problems.append(
                f"{w}: the head must expose the dashboard (Jobs API) with --dashboard-host"
            )
    return problems + check_images(doc, w, repo, want_gpu=True)


def _check_ray_cluster_spec(spec: dict, where: str, repo: Path) -> list[str]:
    problems = []
    dig(spec, "headGroupSpec.template.spec.containers.0.image", where)
    if str(dig(spec, "headGroupSpec.rayStartParams", where).get("dashboard-host")) != "0.0.0.0":
        problems.append(f"{where}: headGroupSpec.rayStartParams.dashboard-host must be 0.0.0.0")
    groups = dig(spec, "workerGroupSpecs", where)
    gpu = [
        g
        for g in groups
        for c in dig(g, "template.spec.containers", where)
        if "nvidia.com/gpu" in (c.get("resources", {}).get("limits") or {})
    ]
    if not gpu:
        problems.append(f"{where}: no worker group requests nvidia.com/gpu")
    for g in gpu:
        if not g.get("maxReplicas", 0) > g.get("minReplicas", 0):
            problems.append(f"{where}: worker group {g.get('groupName')} does not autoscale")
    if not spec.get("enableInTreeAutoscaling"):
        problems.append(f"{where}: enableInTreeAutoscaling must be true")
    return problems + check_images(spec, where, repo, want_gpu=True)


def check_raycluster(path: Path, repo: Path) -> list[str]:
    (doc,) = load_yaml_docs(path)
    w = path.name
    problems = [] if doc.get("kind") == "RayCluster" else [f"{w}: kind must be RayCluster"]
    if not str(doc.get("apiVersion", "")).startswith("ray.io/"):
        problems.append(f"{w}: apiVersion must be ray.io/v1")
    return problems + _check_ray_cluster_spec(dig(doc, "spec", w), w, repo)


def _check_rayjob_common(path: Path, repo: Path) -> tuple[str, list[str]]:
    """(entrypoint, problems) of any RayJob manifest a CronJob creates."""
    (doc,) = load_yaml_docs(path)
    w = path.name
    problems = [] if doc.get("kind") == "RayJob" else [f"{w}: kind must be RayJob"]
    if "generateName" not in dig(doc, "metadata", w):
        problems.append(f"{w}: metadata.generateName is needed (the CronJob creates it repeatedly)")
    entry = dig(doc, "spec.entrypoint", w)
    problems += check_entrypoint(entry, w, repo)
    if "runtimeEnvYAML" in doc["spec"]:
        yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    spec = dig(doc, "spec.rayClusterSpec", w)
    return entry, problems + _check_ray_cluster_spec(spec, w, repo)


def check_rayjob(path: Path, repo: Path) -> list[str]:
    entry, problems = _check_rayjob_common(path, repo)
    if "--run-dir" not in entry:
        problems.append(
            f"{path.name}: the pipeline entrypoint must give --run-dir (where summary.json goes)"
        )
    return problems


def check_partition_rayjob(path: Path, repo: Path) -> list[str]:
    """The per-partition RayJob: run_partition with the four options, the key left as the
    placeholder {partition} that cronjob-partition.yaml fills in (never the clock)."""
    entry, problems = _check_rayjob_common(path, repo)
    w = path.name
    problems += check_partition_command(entry, w, repo)
    if not re.search(r"--partition(?:=|\s+)\{partition\}(?:\s|$)", entry):
        problems.append(
            f"{w}: the entrypoint must give --partition {{partition}} (filled by the CronJob)"
        )
    m = re.search(r"--input(?:=|\s+)(\S+)", entry)
    if m and "{partition}" not in m[1]:
        problems.append(
            f"{w}: --input {m[1]} does not hold {{partition}}: every run reads the same data"
        )
    if "$(date" in entry or "`date" in entry:
        problems.append(
            f"{w}: the entrypoint reads the clock; the partition comes from the schedule"
        )
    return problems


def check_cronjob(path: Path, repo: Path) -> list[str]:
    docs = load_yaml_docs(path)
    w = path.name
    kinds = {d.get("kind"): d for d in docs}
    problems = [
        f"{w}: missing {k}"
        for k in ("CronJob", "ServiceAccount", "Role", "RoleBinding")
        if k not in kinds
    ]
    if problems:
        return problems
    cron = kinds["CronJob"]
    if len(str(dig(cron, "spec.schedule", w)).split()) != 5:
        problems.append(f"{w}: spec.schedule must have 5 fields")
    pod = dig(cron, "spec.jobTemplate.spec.template.spec", w)
    if pod.get("serviceAccountName") != kinds["ServiceAccount"]["metadata"]["name"]:
        problems.append(f"{w}: the pod must run as the submitter ServiceAccount")
    rules = dig(kinds["Role"], "rules", w)
    if not any(
        "rayjobs" in r.get("resources", []) and "create" in r.get("verbs", []) for r in rules
    ):
        problems.append(f"{w}: the Role must allow creating rayjobs")
    command = " ".join(dig(pod, "containers.0.command", w))
    created = re.findall(r"/manifests/(\S+\.yaml)", command)
    if not created:
        problems.append(f"{w}: the CronJob must `kubectl create -f /manifests/<rayjob>.yaml`")
    for name in created:
        target = path.parent / name
        if not target.is_file():
            problems.append(f"{w}: creates {name}, which is not in {path.parent.name}/")
        elif load_yaml_docs(target)[0].get("kind") != "RayJob":
            problems.append(f"{w}: {name} is not a RayJob")
    if not any(v.get("configMap") for v in pod.get("volumes", [])):
        problems.append(f"{w}: the RayJob manifest must be mounted from a ConfigMap")
    return problems + check_images(cron, w, repo)


def check_partition_cronjob(path: Path, repo: Path) -> list[str]:
    """The per-partition CronJob: its pod reads the Job's scheduled-timestamp annotation
    (the schedule's time, not the pod's clock, which is late after a delayed start or a
    retry), derives the key from it and creates the RayJob with {partition} filled in."""
    problems = check_cronjob(path, repo)
    if any(p.startswith(f"{path.name}: missing ") for p in problems):
        return problems
    w = path.name
    kinds = {d.get("kind"): d for d in load_yaml_docs(path)}
    pod = dig(kinds["CronJob"], "spec.jobTemplate.spec.template.spec", w)
    container = dig(pod, "containers.0", w)
    command = "\n".join(str(c) for c in container.get("command", []) + container.get("args", []))
    code = shell_code(command)
    reads = re.findall(r"kubectl\s+get\s+jobs?\b[^\n]*", code.replace("\\.", "."))
    if not any(SCHEDULED_ANNOTATION in r for r in reads):
        problems.append(
            f"{w}: the pod must read its Job's {SCHEDULED_ANNOTATION} annotation "
            "(`kubectl get job`: the schedule's time), not the pod's clock"
        )
    for call in clock_reads(code):
        problems.append(
            f"{w}: `{call}` reads the pod's clock; derive the partition from {SCHEDULED_ANNOTATION}"
        )
    env_paths = [
        str((e.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath", ""))
        for e in container.get("env", [])
    ]
    if not any("job-name" in p for p in env_paths):
        problems.append(
            f"{w}: the pod needs its Job's name (env from "
            "metadata.labels['batch.kubernetes.io/job-name']) to read the annotation"
        )
    rules = dig(kinds["Role"], "rules", w)
    if not any(
        "batch" in r.get("apiGroups", []) and "jobs" in r.get("resources", [])
        and "get" in r.get("verbs", [])
        for r in rules
    ):  # fmt: skip
        problems.append(f"{w}: the Role must allow get on batch jobs (to read the annotation)")
    if "{partition}" not in code or not re.search(r"kubectl\s+create\s+-f\s+-", code):
        problems.append(
            f"{w}: the pod must fill {{partition}} into the mounted RayJob and create it "
            "(sed ... /manifests/<rayjob>.yaml | kubectl create -f -)"
        )
    for name in re.findall(r"/manifests/(\S+\.yaml)", code):
        target = path.parent / name
        if target.is_file():
            entry = load_yaml_docs(target)[0].get("spec", {}).get("entrypoint", "")
            problems += check_partition_command(str(entry), f"{w} -> {name}", repo)
    return problems


CRON_ENV_LINE = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*=")


def cron_lines(path: Path) -> list[str]:
    """The schedule lines of a crontab (no comments, blanks or NAME=value lines)."""
    return [
        line
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#") and not CRON_ENV_LINE.match(line)
    ]


def check_cron(path: Path, repo: Path) -> list[str]:
    problems, w = [], path.name
    lines = cron_lines(path)
    if not lines:
        return [f"{w}: no cron line"]
    for line in lines:
        fields = line.split()
        if len(fields) < 6:
            problems.append(f"{w}: {line!r} is not `m h dom mon dow command`")
            continue
        if re.search(r"(?<!\\)%", " ".join(fields[5:])):
            problems.append(
                f"{w}: unescaped % in {line!r} (cron turns it into a newline; write \\%)"
            )
        for script in re.findall(r"(infra/\S+\.sh)", line):
            p = repo / script
            if not p.is_file():
                problems.append(f"{w}: {script} does not exist")
            elif not p.stat().st_mode & 0o111:
                problems.append(f"{w}: {script} is not executable")
            else:
                text = p.read_text()
                problems += check_entrypoint(
                    " ".join(re.findall(r"python3?\s+jobs/\S+\.py", text)) or text, script, repo
                )
                for ref in re.findall(r"(infra/\S+\.(?:ya?ml|py))", text):
                    if not (repo / ref).is_file():
                        problems.append(f"{script}: names {ref}, which does not exist")
    return problems


# The partition argument a cron line passes: a literal date (a backfill line) or `date -d`
# relative to the fire, its % escaped for crontab.
CRON_DATE_ARG = re.compile(
    r"""submit_partition\.sh\s+(?:(?P<literal>\d{4}-\d{2}-\d{2})(?:\s|$)"""
    r"""|(?P<q>["']?)\$\((?P<cmd>date\s[^)]*)\)(?P=q)(?:\s|$))"""
)


def check_partition_cron(path: Path, repo: Path) -> list[str]:
    """Every line calls submit_partition.sh with the schedule's date as its first argument
    (cron cannot template its scheduled time: `date -d yesterday` at the fire)."""
    problems, w = check_cron(path, repo), path.name
    for line in cron_lines(path):
        if PARTITION_SCRIPT not in line:
            problems.append(f"{w}: {line!r} does not call {PARTITION_SCRIPT}")
            continue
        m = CRON_DATE_ARG.search(line)
        if m is None:
            problems.append(
                f"{w}: {PARTITION_SCRIPT} gets no date argument in {line!r} "
                '(the partition key, e.g. "$(date -u -d yesterday +\\%F)")'
            )
        elif m["cmd"] and not (
            re.search(r"(?:^|\s)(?:-d|--date)(?:=|\s)", m["cmd"])
            and re.search(r"\+\\%F|\+\\%Y-\\%m-\\%d", m["cmd"])
        ):
            problems.append(
                f"{w}: `{m['cmd']}` must be a -d date relative to the fire, "
                "formatted +\\%F (YYYY-MM-DD)"
            )
    return problems


def check_partition_script(path: Path, repo: Path) -> list[str]:
    """submit_partition.sh: ray job submit of run_partition with the four options, the key
    checked, and no clock read (the key is always the scheduler's)."""
    w = PARTITION_SCRIPT
    problems = [] if path.stat().st_mode & 0o111 else [f"{w}: is not executable"]
    code = shell_code(path.read_text())
    submits = [line for line in code.splitlines() if PARTITION_JOB in line]
    if not submits:
        return problems + [f"{w}: does not run {PARTITION_JOB}"]
    for line in submits:
        if "ray job submit" not in line or "--runtime-env infra/runtime_env.yaml" not in line:
            problems.append(
                f"{w}: {PARTITION_JOB} must be sent with "
                "`ray job submit --runtime-env infra/runtime_env.yaml`"
            )
        problems += check_partition_command(line, w, repo)
    for call in clock_reads(code, any_date=True):
        problems.append(f"{w}: `{call}` reads the clock; the key must come from the scheduler")
    if "CLAM_DIST_PARTITION_PATTERN" not in code or "exit 2" not in code:
        problems.append(
            f"{w}: must refuse a missing or malformed key (CLAM_DIST_PARTITION_PATTERN, exit 2)"
        )
    return problems


def _call_name(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _is_airflow_import(node: ast.stmt) -> bool:
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")[0] == "airflow"
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] == "airflow" for a in node.names)
    return False


def check_airflow_dag(path: Path, repo: Path) -> list[str]:
    """The Airflow DAG, checked with ast (no Airflow needed): a DAG with catchup=True and
    max_active_runs=1, a BashOperator calling submit_partition.sh {{ ds }}, airflow
    imports guarded so the file imports without Airflow."""
    w = path.name
    try:
        tree = ast.parse(path.read_text(), filename=w)
    except SyntaxError as exc:
        return [f"{w}: does not parse: {exc.msg} (line {exc.lineno})"]
    problems = [
        f"{w}: line {n.lineno}: airflow is imported unguarded (wrap in try/except ImportError)"
        for n in tree.body
        if _is_airflow_import(n)
    ]
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    dags = [c for c in calls if _call_name(c) == "DAG"]
    if not dags:
        return problems + [f"{w}: no DAG(...)"]
    kw = {k.arg: k.value for c in dags for k in c.keywords}

    def constant(name):
        node = kw.get(name)
        return node.value if isinstance(node, ast.Constant) else None

    if constant("catchup") is not True:
        problems.append(f"{w}: the DAG must set catchup=True (missed days run as backfills)")
    if constant("max_active_runs") != 1:
        problems.append(f"{w}: the DAG must set max_active_runs=1 (partitions in order)")
    if "schedule" not in kw and "schedule_interval" not in kw:
        problems.append(f"{w}: the DAG has no schedule")
    commands = [
        " ".join(
            n.value
            for n in ast.walk(k.value)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
        )
        for c in calls
        if _call_name(c) == "BashOperator"
        for k in c.keywords
        if k.arg == "bash_command"
    ]
    calling = [c for c in commands if "submit_partition.sh" in c]
    if not calling:
        problems.append(f"{w}: no BashOperator calls {PARTITION_SCRIPT}")
    elif not any(re.search(r"submit_partition\.sh\s+[\"']?\{\{\s*ds\s*\}\}", c) for c in calling):
        problems.append(f"{w}: submit_partition.sh must get {{{{ ds }}}} (the run's logical date)")
    script = repo / PARTITION_SCRIPT
    if calling and not (script.is_file() and script.stat().st_mode & 0o111):
        problems.append(f"{w}: {PARTITION_SCRIPT} is missing or not executable")
    return problems


def check_dockerfile(path: Path, repo: Path) -> list[str]:
    text, w, problems = path.read_text(), path.name, []
    ray_pin = cluster_pins(repo)["ray"][0]
    torch_pin = cluster_pins(repo)["torch"][0]
    m = re.search(r"^FROM rayproject/ray:([\d.]+)-(py\d+)", text, re.M)
    if not m or m[1] != ray_pin or m[2] != PY_TAG:
        problems.append(f"{w}: FROM must be rayproject/ray:{ray_pin}-{PY_TAG}-<flavor>")
    if f'"torch=={torch_pin}"' not in text:
        problems.append(f"{w}: must install torch=={torch_pin} (the pin) before the requirements")
    if f"WORKDIR {APP_DIR}" not in text:
        problems.append(f"{w}: WORKDIR must be {APP_DIR} (manifests run jobs from there)")
    for src in re.findall(r"^COPY (?!--)(.+) \S+$", text, re.M):
        for item in src.split():
            if not (repo / item).exists():
                problems.append(f"{w}: COPY source {item} does not exist")
    return problems


CHECKS = {
    "infra/cluster/aws.yaml": check_aws,
    "infra/kuberay/raycluster.yaml": check_raycluster,
    "infra/kuberay/rayjob-pipeline.yaml": check_rayjob,
    "infra/kuberay/cronjob-pipeline.yaml": check_cronjob,
    "infra/cron/clam-dist.cron": check_cron,
    "infra/kuberay/rayjob-partition.yaml": check_partition_rayjob,
    "infra/kuberay/cronjob-partition.yaml": check_partition_cronjob,
    "infra/cron/clam-dist-partition.cron": check_partition_cron,
    "infra/cron/submit_partition.sh": check_partition_script,
    "infra/airflow/clam_dist_partition_dag.py": check_airflow_dag,
    "infra/docker/Dockerfile": check_dockerfile,
}


def check_all(repo: Path = REPO) -> list[str]:
    problems = check_versions(repo) + check_runtime_env(repo / "infra/runtime_env.yaml", repo)
    for rel, check in CHECKS.items():
        path = repo / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
            continue
        try:
            problems += check(path, repo)
        except InfraError as exc:
            problems.append(str(exc))
    return problems


def partition_config_class():
    """The config class `clam-dist run-partition` loads (the pipeline's sections plus
    [drift], [refresh], [gate]); None where this checkout has no registry package."""
    import importlib
    import importlib.util

    name = "clam_dist.registry.config"
    try:
        found = importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        found = False
    return importlib.import_module(name).PartitionConfig if found else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what")
    env = sub.add_parser("runtime-env", help="check one runtime_env YAML")
    env.add_argument("path")
    cfg = sub.add_parser("pipeline-config", help="validate a pipeline config + overrides")
    cfg.add_argument("--config", default=None)
    cfg.add_argument("--set", dest="overrides", action="append", default=[])
    part = sub.add_parser(
        "partition-config", help="validate a run-partition config + overrides (before submitting)"
    )
    part.add_argument("--config", default=None)
    part.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    if args.what in ("pipeline-config", "partition-config"):
        sys.path.insert(0, str(REPO))
        from clam_dist.config import ConfigError, load_config

        try:
            cls = partition_config_class() if args.what == "partition-config" else None
        except Exception as exc:  # the command module is there but does not import
            print(f"config error: clam-dist run-partition does not import: {exc}", file=sys.stderr)
            return 2
        if cls is None:
            from clam_dist.pipeline.config import PipelineConfig as cls
        try:
            load_config(cls, args.config, args.overrides)
        except ConfigError as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return 2
        print(f"{args.what.split('-')[0]} config ok")
        return 0
    problems = check_runtime_env(args.path) if args.what == "runtime-env" else check_all()
    for p in problems:
        print(f"infra problem: {p}", file=sys.stderr)
    if not problems:
        print("infra ok" if args.what is None else f"{args.path}: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
