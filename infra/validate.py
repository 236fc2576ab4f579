"""Check infra/ before anything is deployed or submitted (also run by tests/test_infra.py).

    python infra/validate.py                          # every manifest: exit 1 and a list of problems
    python infra/validate.py runtime-env infra/runtime_env.yaml
    python infra/validate.py pipeline-config [--config my.toml] [--set model.n_clusters=8 ...]

Checks: YAML parses; required fields; the scripts and paths manifests name exist in the
repo; images and pinned package versions agree with pyproject.toml; no secrets in env vars.
"""

from __future__ import annotations

import argparse
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


def check_rayjob(path: Path, repo: Path) -> list[str]:
    (doc,) = load_yaml_docs(path)
    w = path.name
    problems = [] if doc.get("kind") == "RayJob" else [f"{w}: kind must be RayJob"]
    if "generateName" not in dig(doc, "metadata", w):
        problems.append(f"{w}: metadata.generateName is needed (the CronJob creates it repeatedly)")
    entry = dig(doc, "spec.entrypoint", w)
    problems += check_entrypoint(entry, w, repo)
    if "--run-dir" not in entry:
        problems.append(
            f"{w}: the pipeline entrypoint must give --run-dir (where summary.json goes)"
        )
    if "runtimeEnvYAML" in doc["spec"]:
        yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    spec = dig(doc, "spec.rayClusterSpec", w)
    return problems + _check_ray_cluster_spec(spec, w, repo)


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


def check_cron(path: Path, repo: Path) -> list[str]:
    problems, w = [], path.name
    lines = [
        line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    if not lines:
        return [f"{w}: no cron line"]
    for line in lines:
        fields = line.split()
        if len(fields) < 6:
            problems.append(f"{w}: {line!r} is not `m h dom mon dow command`")
            continue
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
    args = parser.parse_args(argv)
    if args.what == "pipeline-config":
        sys.path.insert(0, str(REPO))
        from clam_dist.config import ConfigError, load_config
        from clam_dist.pipeline.config import PipelineConfig

        try:
            load_config(PipelineConfig, args.config, args.overrides)
        except ConfigError as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return 2
        print("pipeline config ok")
        return 0
    problems = check_runtime_env(args.path) if args.what == "runtime-env" else check_all()
    for p in problems:
        print(f"infra problem: {p}", file=sys.stderr)
    if not problems:
        print("infra ok" if args.what is None else f"{args.path}: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
