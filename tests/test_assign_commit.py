"""The stage / verify / commit protocol of assignment outputs, without Ray: local disk and
the local S3 server; crashes at every point of the commit; prefixes that are not ours."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clam_dist.assign.commit import (
    MANIFEST,
    SUCCESS,
    CommitError,
    ForeignOutputError,
    IncompleteOutputError,
    OutputExistsError,
    OutputPrefix,
    iter_assignments,
    read_assignments,
)


def _stage(prefix: OutputPrefix, staging: str, ids: np.ndarray, files: int) -> None:
    """What the Ray write does: Parquet files under the attempt's staging folder."""
    spath = prefix.staging_path(staging)
    prefix.fs.makedirs(spath, exist_ok=True)
    for i, part in enumerate(np.array_split(ids, files)):
        table = pa.table({"id": part, "cluster": (part % 3).astype(np.int64)})
        with prefix.fs.open(f"{spath}/ray-{i:03d}.parquet", "wb") as f:
            pq.write_table(table, f)


def _ids(url: str, opts=None) -> np.ndarray:
    return np.sort(read_assignments(url, opts).column("id").to_numpy())


@pytest.mark.parametrize("store", ["local", "s3"])
def test_commit_roundtrip_and_refusals(store, tmp_path, s3_server):
    url = str(tmp_path / "out") if store == "local" else s3_server.url("commit/roundtrip")
    opts = None if store == "local" else s3_server.storage_options
    prefix = OutputPrefix(url, opts)
    staging = prefix.prepare(overwrite=False)
    assert "/_staging/" in staging
    _stage(prefix, staging, np.arange(100), files=3)
    with pytest.raises(IncompleteOutputError, match="no _SUCCESS"):
        read_assignments(url, opts)  # staged is not committed
    manifest = prefix.commit(staging, 100, {"input": "x", "model": "m"})
    assert manifest["rows"] == 100 and manifest["file_rows"] == [34, 33, 33]
    assert manifest["files"] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    names = sorted(p.rsplit("/", 1)[-1] for p in prefix.fs.find(prefix.path))
    assert names == [SUCCESS, MANIFEST, *manifest["files"]]  # no staging left over
    np.testing.assert_array_equal(_ids(url, opts), np.arange(100))
    streamed = np.concatenate(
        [b.column("id").to_numpy() for b in iter_assignments(url, opts, batch_rows=7)]
    )
    np.testing.assert_array_equal(np.sort(streamed), np.arange(100))
    with pytest.raises(OutputExistsError, match="already holds a committed result"):
        OutputPrefix(url, opts).prepare(overwrite=False)
    # overwrite: the committed result stays readable until the new one is verified and
    # swapped in; a failed attempt leaves it intact, a successful one replaces it whole
    staging = prefix.prepare(overwrite=True)
    assert prefix.is_committed()
    np.testing.assert_array_equal(_ids(url, opts), np.arange(100))
    _stage(prefix, staging, np.arange(100, 150), files=2)
    with pytest.raises(CommitError):
        prefix.commit(staging, 51, {})
    prefix.abort(staging)
    np.testing.assert_array_equal(_ids(url, opts), np.arange(100))
    staging = prefix.prepare(overwrite=True)
    _stage(prefix, staging, np.arange(100, 150), files=2)
    second = prefix.commit(staging, 50, {})
    np.testing.assert_array_equal(_ids(url, opts), np.arange(100, 150))
    names = sorted(p.rsplit("/", 1)[-1] for p in prefix.fs.find(prefix.path))
    assert names == sorted([SUCCESS, MANIFEST, *second["files"]])  # old parts removed


def test_row_count_mismatch_is_not_committed(tmp_path):
    prefix = OutputPrefix(str(tmp_path / "out"))
    staging = prefix.prepare(False)
    _stage(prefix, staging, np.arange(99), files=2)
    with pytest.raises(CommitError, match="staged 99 rows in 2 files, but the input has 100"):
        prefix.commit(staging, 100, {})
    assert not prefix.is_committed()
    assert not list((tmp_path / "out").glob("part-*"))


@pytest.mark.parametrize("fail_at", [0, 1, 2, "manifest"])
def test_crash_anywhere_in_the_commit_then_rerun_gives_exactly_n(fail_at, tmp_path, monkeypatch):
    """The driver dies after moving `fail_at` parts (or after the manifest): the prefix is
    incomplete, readers refuse it, and the re-run yields exactly n rows, no duplicates."""
    url = str(tmp_path / "out")
    prefix = OutputPrefix(url)
    staging = prefix.prepare(False)
    _stage(prefix, staging, np.arange(60), files=3)
    fs_cls = type(prefix.fs)
    real_mv, real_pipe, moved = fs_cls.mv, fs_cls.pipe, []

    def mv(self, src, dst, *a, **kw):
        if fail_at != "manifest" and len(moved) == fail_at:
            raise OSError("driver killed mid-commit")
        moved.append(dst)
        return real_mv(self, src, dst, *a, **kw)

    def pipe(self, path, *a, **kw):
        if fail_at == "manifest" and str(path).endswith(SUCCESS):
            raise OSError("driver killed before _SUCCESS")
        return real_pipe(self, path, *a, **kw)

    monkeypatch.setattr(fs_cls, "mv", mv)
    monkeypatch.setattr(fs_cls, "pipe", pipe)
    with pytest.raises(OSError, match="killed"):
        prefix.commit(staging, 60, {})
    monkeypatch.undo()
    assert not prefix.is_committed()
    with pytest.raises(IncompleteOutputError):
        read_assignments(url)
    # re-run: leftovers (staging, moved parts, manifest) are cleared, never appended to
    prefix = OutputPrefix(url)
    staging = prefix.prepare(False)
    attempt = staging.rsplit("/", 1)[-1]
    left = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*"))
    assert left == ["_staging", f"_staging/{attempt}", f"_staging/{attempt}/_attempt.json"]
    _stage(prefix, staging, np.arange(60), files=2)
    prefix.commit(staging, 60, {})
    np.testing.assert_array_equal(_ids(url), np.arange(60))
    assert json.loads((tmp_path / "out" / MANIFEST).read_text())["rows"] == 60


def test_foreign_files_are_refused_and_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.csv").write_text("a,b\n")
    (out / "_staging").mkdir()
    (out / "_staging" / "old.parquet").write_bytes(b"x")
    with pytest.raises(  # an unrecorded file under _staging/ is foreign too
        ForeignOutputError, match=r"2 file\(s\) that clam-dist assign did not write"
    ):
        OutputPrefix(str(out)).prepare(overwrite=True)
    assert (out / "precious.csv").exists() and (out / "_staging" / "old.parquet").exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ForeignOutputError, match="is a file"):
        OutputPrefix(str(tmp_path / "afile")).prepare(False)


def test_unwritable_output_is_named(tmp_path):
    # A path below a regular file cannot be created, whatever the user (root included).
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(PermissionError, match="is not writable"):
        OutputPrefix(str(tmp_path / "blocker" / "out")).prepare(False)


def _checksums(root) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_files_named_like_ours_but_never_recorded_are_refused_and_kept(tmp_path):
    """A data set of part-NNNNN.parquet files (what make-dataset writes) is not ours."""
    out = tmp_path / "mine"
    out.mkdir()
    for i in range(2):
        pq.write_table(pa.table({"id": np.arange(3)}), out / f"part-{i:05d}.parquet")
    (out / "_SUCCESS").write_bytes(b"")
    before = _checksums(out)
    for overwrite in (False, True):
        with pytest.raises(ForeignOutputError, match=r"part-00000.parquet"):
            OutputPrefix(str(out)).prepare(overwrite=overwrite)
    assert _checksums(out) == before


def test_failed_attempt_leaves_no_empty_folders(tmp_path):
    prefix = OutputPrefix(str(tmp_path / "new" / "out"))
    staging = prefix.prepare(False)
    _stage(prefix, staging, np.arange(10), files=1)
    prefix.abort(staging)
    assert not (tmp_path / "new" / "out").exists()  # it did not exist before the attempt


def test_crash_after_an_overwrite_manifest_finishes_the_swap(tmp_path, monkeypatch):
    """The new manifest is live but the old parts were not yet removed: the next attempt
    completes the clean-up (only the files the record names) and readers see new rows."""
    url = str(tmp_path / "out")
    prefix = OutputPrefix(url)
    staging = prefix.prepare(False)
    _stage(prefix, staging, np.arange(10), files=2)
    first = prefix.commit(staging, 10, {})
    staging = prefix.prepare(True)
    _stage(prefix, staging, np.arange(10, 30), files=1)
    monkeypatch.setattr(OutputPrefix, "_settle", lambda self, a, r: None)  # crash here
    prefix.commit(staging, 20, {})
    monkeypatch.undo()
    assert all((tmp_path / "out" / f).exists() for f in first["files"])  # not yet removed
    np.testing.assert_array_equal(_ids(url), np.arange(10, 30))
    OutputPrefix(url).prepare(True)
    assert not any((tmp_path / "out" / f).exists() for f in first["files"])
    np.testing.assert_array_equal(_ids(url), np.arange(10, 30))


def test_a_task_that_writes_after_the_abort_leaves_nothing(tmp_path):
    """Ray Data cancels a failed job's other tasks without waiting for them: one inside a
    Parquet write finishes it after the clean-up. The abort sweeps its attempt folder
    for a moment, so the prefix this attempt created is gone again."""
    import threading
    import time

    from clam_dist.assign.pipeline import STRAGGLER_SWEEP_S, _abort

    out = tmp_path / "out"
    prefix = OutputPrefix(str(out))
    staging = prefix.prepare(overwrite=False)
    folder = prefix.staging_path(staging)

    def late_write() -> None:
        time.sleep(STRAGGLER_SWEEP_S / 2)  # after the abort, within the first sweep
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "part-late.parquet"), "wb") as f:
            f.write(b"PAR1")

    writer = threading.Thread(target=late_write)
    writer.start()
    _abort(prefix, staging)
    writer.join()
    assert not out.exists()
