"""Rows shuffled by coarse cell, on any fsspec URL: what the distributed two-level job
(clam_dist/train/cells.py) writes between its levels, and its checkpoints.

Layout under ``<root>``:

- ``cell=<c>/part-<p>.parquet``: the rows of input part ``p`` that fell in coarse cell
  ``c`` (in the part's row order), as the model sees them (standardised);
- ``parts/part-<p>.json``: part ``p``'s row count per cell, written LAST: a part whose
  record exists is shuffled completely (a lost task re-shuffles only its own part);
- ``coarse.npy``: the coarse centres, written before the shuffle (a resumed job reuses
  them, so its cells are those its earlier parts were shuffled into);
- ``fine/cell=<c>.npz``: cell ``c``'s fitted fine prototypes and the fit's small
  attributes (its checkpoint: a lost cell task retrains only its cell).

A cell task reads exactly the files the part records name for its cell: no listing, so
an object store's listing never decides what a cell sees.
"""

from __future__ import annotations

import io
import json
import os
import uuid

import numpy as np
import pyarrow.parquet as pq

from clam_dist.data.source import open_filesystem
from clam_dist.data.urls import is_local_url
from clam_dist.data.writer import vectors_table, write_table


class CellShards:
    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = url.rstrip("/")
        self.storage_options = storage_options

    # fsspec filesystems are opened per call: the object is shipped to Ray tasks, and an
    # s3fs instance carries a session that should not travel.
    def _fs(self):
        return open_filesystem(self.url, self.storage_options)

    def _url(self, *parts: str) -> str:
        return "/".join([self.url, *parts])

    def _write_bytes(self, data: bytes, *parts: str) -> None:
        """Whole or not at all: a local file is written aside and renamed into place; an
        object store publishes an object only when its upload completes."""
        fs, path = open_filesystem(self._url(*parts), self.storage_options)
        if is_local_url(self.url):
            parent = path.rsplit("/", 1)[0]
            fs.makedirs(parent, exist_ok=True)
            aside = f"{parent}/.{path.rsplit('/', 1)[-1]}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
            fs.pipe_file(aside, data)
            fs.mv(aside, path)
        else:
            fs.pipe_file(path, data)

    def _read_bytes(self, *parts: str) -> bytes | None:
        fs, path = open_filesystem(self._url(*parts), self.storage_options)
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            return None

    # -- the shuffle --------------------------------------------------------------------

    def part_counts(self, part: int) -> dict[int, int] | None:
        """Rows per cell of a part already shuffled, or None."""
        data = self._read_bytes("parts", f"part-{part:05d}.json")
        if data is None:
            return None
        return {int(c): int(n) for c, n in json.loads(data)["counts"].items()}

    def write_part(self, part: int, z: np.ndarray, cell: np.ndarray) -> dict[int, int]:
        """Write part ``part``'s rows ``z`` split by ``cell`` (one file per cell present,
        rows in their order), then its record; returns rows per cell."""
        if z.shape[0] != cell.shape[0]:
            raise ValueError(f"{z.shape[0]} rows but {cell.shape[0]} cell labels")
        order = np.argsort(cell, kind="stable")
        cells, starts, counts = np.unique(cell[order], return_index=True, return_counts=True)
        for c, s, n in zip(cells.tolist(), starts.tolist(), counts.tolist()):
            rows = z[order[s : s + n]]
            write_table(
                vectors_table(rows), self._url(f"cell={c:05d}", f"part-{part:05d}.parquet"),
                self.storage_options,
            )  # fmt: skip
        record = {"counts": {str(c): int(n) for c, n in zip(cells.tolist(), counts.tolist())}}
        self._write_bytes(json.dumps(record).encode(), "parts", f"part-{part:05d}.json")
        return {int(c): int(n) for c, n in zip(cells.tolist(), counts.tolist())}

    def read_cell(self, cell: int, parts: list[int], d: int) -> np.ndarray:
        """Cell ``cell``'s rows from the given parts, in part order: (rows, d) float32."""
        fs, _ = self._fs()
        blocks = []
        for p in parts:
            _, path = open_filesystem(
                self._url(f"cell={cell:05d}", f"part-{p:05d}.parquet"), self.storage_options
            )
            with fs.open(path, "rb") as f:
                column = pq.read_table(f, columns=["x"]).column("x").combine_chunks()
            blocks.append(column.values.to_numpy(zero_copy_only=False).reshape(-1, d))
        if not blocks:
            return np.empty((0, d), np.float32)
        return np.ascontiguousarray(np.concatenate(blocks), dtype=np.float32)

    # -- the levels' checkpoints --------------------------------------------------------

    def write_coarse(self, coarse: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, np.asarray(coarse, np.float32))
        self._write_bytes(buf.getvalue(), "coarse.npy")

    def read_coarse(self) -> np.ndarray | None:
        """The coarse centres the shuffle used, or None before it started."""
        data = self._read_bytes("coarse.npy")
        return None if data is None else np.load(io.BytesIO(data))

    def write_fine(self, cell: int, prototypes: np.ndarray, info: dict) -> None:
        buf = io.BytesIO()
        np.savez(buf, prototypes=np.asarray(prototypes, np.float32), info=json.dumps(info))
        self._write_bytes(buf.getvalue(), "fine", f"cell={cell:05d}.npz")

    def fitted_cells(self) -> set[int]:
        """The cells with a checkpoint, from one listing (a resumed job's progress starts
        from them; each task still reads its own)."""
        fs, path = open_filesystem(self._url("fine"), self.storage_options)
        try:
            names = fs.ls(path, detail=False)
        except FileNotFoundError:
            return set()
        found = set()
        for name in names:
            base = str(name).rstrip("/").rsplit("/", 1)[-1]
            if base.startswith("cell=") and base.endswith(".npz") and base[5:-4].isdigit():
                found.add(int(base[5:-4]))
        return found

    def read_fine(self, cell: int) -> tuple[np.ndarray, dict] | None:
        """(prototypes, info) of a cell already fitted, or None."""
        data = self._read_bytes("fine", f"cell={cell:05d}.npz")
        if data is None:
            return None
        with np.load(io.BytesIO(data)) as z:
            return np.asarray(z["prototypes"], np.float32), json.loads(str(z["info"]))
