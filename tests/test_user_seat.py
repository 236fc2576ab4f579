"""Every subcommand as a person meets it from a shell (a real subprocess, stdout and
stderr read at the descriptor level): a failure is ONE line on stderr, nothing on stdout,
exit code 2 for bad input found before any work; a usage error too."""

from __future__ import annotations

import pytest
from cli_harness import run_cli


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from clam_dist import KMeans
    from clam_dist.artifacts import save_artifact
    from clam_dist.datasets.synthetic import make_gaussian_mixture

    x, _, _ = make_gaussian_mixture(300, 4, 3, seed=0)
    root = tmp_path_factory.mktemp("seat")
    save_artifact(KMeans(n_clusters=3, random_state=0).fit(x).to_artifact(), str(root / "m"))
    return root / "m"


# (argv, what the one line must name); paths under "{tmp}" are filled per test
FAILURES = {
    "demo": (["demo", "--dataset", "nosuch"], ["--dataset", "nosuch"]),
    "quality": (["quality", "--datasets", "nosuch"], ["--datasets", "nosuch"]),
    "make-dataset": (["make-dataset", "{tmp}/x", "--n", "0"], ["--n"]),
    "train": (["train", "--data", "{tmp}/none", "--k", "3"], ["{tmp}/none"]),
    "assign": (
        ["assign", "--input", "{tmp}/none", "--model", "{model}", "--output", "{tmp}/o"],
        ["{tmp}/none"],
    ),
    "evaluate": (
        [
            "evaluate",
            "--input",
            "{tmp}/none",
            "--assignments",
            "{tmp}/none2",
            "--model",
            "{model}",
            "--report-dir",
            "{tmp}/rep",
        ],
        ["{tmp}/none2"],
    ),
    "pipeline": (["pipeline", "--run-dir", "{tmp}/run", "--set", "data.url={tmp}/none"], ["none"]),
    "tune": (["tune", "--data", "{tmp}/none", "--k", "3"], ["{tmp}/none"]),
    "inspect": (["inspect", "{tmp}/none"], ["{tmp}/none", "does not exist"]),
    "run-partition": (
        [
            "run-partition",
            "--registry",
            "{tmp}/reg",
            "--name",
            "m",
            "--partition",
            "2026-12-01",
            "--input",
            "{tmp}/none",
        ],
        ["{tmp}/none"],
    ),  # fmt: skip
    "models": (["models", "list", "--registry", "{tmp}/reg", "--name", "m"], ["'m'"]),
    "report": (["report", "--registry", "{tmp}/reg", "--name", "m"], ["m"]),
    "no command": ([], ["a command is required"]),
    "unknown command": (["nosuch"], ["nosuch"]),
    "unknown option": (["assign", "--nosuch"], ["--nosuch"]),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_every_subcommand_fails_in_one_line_before_any_work(case, tmp_path, model_dir):
    argv, needles = FAILURES[case]

    def fill(s: str) -> str:
        return s.replace("{tmp}", str(tmp_path)).replace("{model}", str(model_dir))

    r = run_cli(*[fill(a) for a in argv], cwd=tmp_path, timeout=120)
    assert r.code == 2, r.describe()
    r.one_line(*[fill(n) for n in needles])
    r.no_ray_lines()
    assert sorted(p.name for p in tmp_path.iterdir()) == [], r.describe()  # nothing written


def test_help_is_on_stdout_and_succeeds():
    r = run_cli("assign", "--help")
    assert r.code == 0 and r.err == "" and "--input" in r.out
