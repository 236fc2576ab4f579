"""A run folder records what it trains: `clam-dist train` under a run.name and storage path
that hold another config's run is refused (Ray Train would silently resume that run), a
re-run of the same config passes (crash retries resume), and a refusal changes no file.
Unit tests call the guard on tmp_path folders (no Ray); one end-to-end test goes through
the CLI on a real local Ray."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from clam_dist.config import load_config, to_dict
from clam_dist.secrets import persistable
from clam_dist.train import run_record
from clam_dist.train.config import TrainConfig

NAME = "clam-train"  # the default run.name: the case that bit users


def config(*extra: str) -> TrainConfig:
    return load_config(
        TrainConfig,
        None,
        ["data.url=/data/a", "model.n_clusters=4", "optim.lr=0.05", *extra],
    )


def checksums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def legacy_checkpoint(store: Path, dirname: str, cfg: TrainConfig) -> None:
    """A checkpoint folder as an older clam-dist left it: state.json with the config, and
    no run-config.json beside it."""
    ckdir = store / NAME / dirname
    ckdir.mkdir(parents=True)
    (ckdir / "state.json").write_text(json.dumps({"k": 4, "config": persistable(to_dict(cfg))}))
    (ckdir / "tensors.safetensors").write_bytes(b"\0")


def test_first_run_writes_the_record_and_the_same_config_passes(tmp_path):
    run_record.check(config(), str(tmp_path))  # an empty store: nothing to compare
    assert not (tmp_path / NAME).exists()  # check only reads
    run_record.record(config(), str(tmp_path))
    path = tmp_path / NAME / "run-config.json"
    ident = json.loads(path.read_text())["identity"]
    assert ident["model.n_clusters"] == 4 and ident["data.url"] == "/data/a"
    assert "run.max_failures" not in ident and "data.storage_options" not in ident
    before = checksums(tmp_path)
    run_record.check(config(), str(tmp_path))  # a re-run (a crash retry) of the same config
    run_record.record(config(), str(tmp_path))
    assert checksums(tmp_path) == before  # the record is written once, never replaced
    assert [p.name for p in (tmp_path / NAME).iterdir()] == ["run-config.json"]  # no temp


@pytest.mark.parametrize(
    ("override", "shown"),
    [
        ("data.url=/data/b", 'data.url: "/data/a" -> "/data/b"'),
        ("model.n_clusters=8", "model.n_clusters: 4 -> 8"),
        ("optim.lr=0.1", "optim.lr: 0.05 -> 0.1"),
        ("model.method=kmeans", 'model.method: "clam" -> "kmeans"'),
        ("optim.epochs=9", "optim.epochs: 3 -> 9"),
    ],
)
def test_a_changed_config_is_refused_and_nothing_changes(tmp_path, override, shown):
    run_record.record(config(), str(tmp_path))
    (tmp_path / NAME / "checkpoint_2025-01-01_00-00-00.000000").mkdir()
    before = checksums(tmp_path)
    for guard in (run_record.check, run_record.record):
        with pytest.raises(ValueError) as info:
            guard(config(override), str(tmp_path))
        msg = str(info.value)
        assert shown in msg, msg
        assert f"run folder {tmp_path / NAME} " in msg
        assert "--set run.name=" in msg and "run.storage_path" in msg
        assert "\n" not in msg  # the CLI shows it as one line
    assert checksums(tmp_path) == before


def test_every_differing_field_is_named_up_to_five(tmp_path):
    run_record.record(config(), str(tmp_path))
    with pytest.raises(ValueError) as info:
        run_record.check(
            config("data.url=/data/b", "model.n_clusters=8", "optim.lr=0.1"), str(tmp_path)
        )
    msg = str(info.value)
    for shown in ("data.url: ", "model.n_clusters: 4 -> 8", "optim.lr: 0.05 -> 0.1"):
        assert shown in msg, msg
    many = ("model.alpha=0.3", "model.steps=3", "optim.batch_size=7")
    with pytest.raises(ValueError, match=r"optim\.batch_size: 1024 -> 7, and 1 more\)") as info:
        run_record.check(
            config("data.url=/data/b", "model.n_clusters=8", "optim.lr=0.1", *many),
            str(tmp_path),
        )
    assert "optim.lr" not in str(info.value)  # the sixth (sorted by name) is only counted


def test_retry_only_fields_and_other_methods_sections_pass(tmp_path):
    run_record.record(config("run.fail_at_step=17", "run.max_failures=0"), str(tmp_path))
    run_record.check(
        config(
            "run.max_failures=3",
            "run.report_every=7",
            "run.verify_every=0",
            "run.barrier_timing=true",
            "run.checkpoint_every=2",
            "run.checkpoint_every_steps=9",
            "run.tensorboard_dir=",
            "data.read_threads=4",
            'data.storage_options={"endpoint_url": "http://127.0.0.1:9"}',
            "dcam.latent_dim=3",  # a clam run trains no autoencoder
        ),
        str(tmp_path),
    )


def test_dcam_sections_count_for_a_dcam_run(tmp_path):
    run_record.record(config("model.method=dcam"), str(tmp_path))
    with pytest.raises(ValueError, match=r"dcam\.latent_dim: 10 -> 3"):
        run_record.check(config("model.method=dcam", "dcam.latent_dim=3"), str(tmp_path))


def test_a_field_an_older_record_lacks_compares_as_its_default(tmp_path):
    run_record.record(config("model.method=attention"), str(tmp_path))
    path = tmp_path / NAME / "run-config.json"
    record = json.loads(path.read_text())
    del record["identity"]["attention.similarity"]  # as if written before the field existed
    path.write_text(json.dumps(record))
    run_record.check(config("model.method=attention"), str(tmp_path))
    with pytest.raises(ValueError, match=r'attention\.similarity: "distance" -> "dot"'):
        run_record.check(
            config("model.method=attention", "attention.similarity=dot"), str(tmp_path)
        )


def test_legacy_folder_is_compared_by_its_newest_checkpoint(tmp_path):
    other = config("model.n_clusters=8")
    legacy_checkpoint(tmp_path, "checkpoint_2025-01-01_00-00-00.000000", config())  # older
    legacy_checkpoint(tmp_path, "checkpoint_2025-01-02_00-00-00.000000", other)  # newest
    before = checksums(tmp_path)
    for guard in (run_record.check, run_record.record):
        with pytest.raises(ValueError, match=r"checkpoint_2025-01-02.*n_clusters: 8 -> 4"):
            guard(config(), str(tmp_path))
    assert checksums(tmp_path) == before
    run_record.record(other, str(tmp_path))  # the same config: accepted, and now recorded
    assert checksums(tmp_path).keys() == before.keys() | {f"{NAME}/run-config.json"}
    with pytest.raises(ValueError, match=r"run-config\.json: model\.n_clusters: 8 -> 4"):
        run_record.check(config(), str(tmp_path))


def test_legacy_folder_of_unknown_config_is_refused(tmp_path):
    ckdir = tmp_path / NAME / "checkpoint_2025-01-01_00-00-00.000000"
    ckdir.mkdir(parents=True)  # no state.json (an interrupted upload, a foreign run)
    before = checksums(tmp_path)
    with pytest.raises(ValueError, match=r"unknown config.*--set run\.name="):
        run_record.record(config(), str(tmp_path))
    (ckdir / "state.json").write_text('{"k": 4}')  # no config in it
    with pytest.raises(ValueError, match="unknown config"):
        run_record.record(config(), str(tmp_path))
    assert not (tmp_path / NAME / "run-config.json").exists()
    assert checksums(tmp_path).keys() == before.keys() | {f"{NAME}/{ckdir.name}/state.json"}


def test_the_record_holds_no_credentials(tmp_path):
    cfg = config()
    cfg.data.storage_options = {
        "key": "AKIAEXAMPLEKEY",
        "secret": "s3cr3t",
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},
    }
    run_record.record(cfg, str(tmp_path))
    text = (tmp_path / NAME / "run-config.json").read_text()
    assert "s3cr3t" not in text and "AKIAEXAMPLEKEY" not in text


def test_resume_from_another_run_is_guarded_under_the_new_name(tmp_path):
    run_record.record(config("run.name=first"), str(tmp_path))
    old = str(tmp_path / "first" / "checkpoint_2025-01-01_00-00-00.000000")
    cont = config("run.name=continued", "optim.epochs=5", f"run.resume_from={old}")
    run_record.record(cont, str(tmp_path))  # the new name's folder: a first run
    assert (tmp_path / "continued" / "run-config.json").exists()
    with pytest.raises(
        ValueError, match=r'run\.resume_from: ".*/checkpoint_2025-01-01_00-00-00.000000" -> null'
    ):
        run_record.check(config("run.name=continued", "optim.epochs=5"), str(tmp_path))


def test_remote_store_record_and_refusal(s3_server):
    url = s3_server.url("run-record")
    cfg = config()
    cfg.data.storage_options = s3_server.storage_options
    run_record.record(cfg, url)
    changed = config("model.n_clusters=8")
    changed.data.storage_options = s3_server.storage_options
    with pytest.raises(ValueError, match=r"model\.n_clusters: 4 -> 8"):
        run_record.check(changed, url)
    run_record.check(cfg, url)


@pytest.mark.ray
def test_cli_refuses_to_resume_another_configs_run(ray_local, tmp_path, capsys):
    """Two `clam-dist train` runs with the defaults' run.name and one storage path: the
    second, with another k, is refused in one line before any work and the first run's
    files stay as they were; the same command as the first still runs (it resumes)."""
    from clam_dist.cli import main
    from clam_dist.data.writer import write_vectors
    from clam_dist.datasets.synthetic import make_gaussian_mixture

    x, y, _ = make_gaussian_mixture(600, 4, 3, separation=7.0, seed=3)
    write_vectors(str(tmp_path / "data"), x, labels=y, rows_per_file=300)
    store = tmp_path / "store"

    def train(k: int) -> tuple[int, str]:
        code = main(
            [
                "train",
                "--data",
                str(tmp_path / "data"),
                "--k",
                str(k),
                "--workers",
                "1",
                "--set",
                f"run.storage_path={store}",
                "--set",
                "optim.epochs=1",
                "--set",
                "optim.batch_size=100",
                "--set",
                "data.init_sample=300",
            ]
        )
        return code, capsys.readouterr().err

    code, err = train(3)
    assert code == 0, err
    assert (store / NAME / "run-config.json").exists() and (store / NAME / "model").exists()
    before = checksums(store)
    code, err = train(4)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("{")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, lines
    assert "model.n_clusters: 3 -> 4" in lines[0] and "--set run.name=" in lines[0], lines[0]
    assert checksums(store) == before
    code, err = train(3)  # a re-run of the first command resumes its run
    assert code == 0, err
    ident = json.loads((store / NAME / "run-config.json").read_text())["identity"]
    assert ident["model.n_clusters"] == 3  # still the first run's record
