"""End-to-end scale benchmark: the whole pipeline (validate, train, assign, evaluate) on
generated float32 Parquet at two sizes side by side, with the peak memory of every
process.

    python jobs/bench_scale.py [--sizes 2500000,10000000 --d 128 --k 1024 --method kmeans
                                --epochs 1 --batch-size 65536 --files 4 --root /tmp/clam-scale
                                --json bench_results/scale.json]

The largest size is generated once as ``--files`` large Parquet files (row groups of
131,072 rows, streamed: the generator never holds more than one chunk); a smaller size
is the first files of it, so each smaller size must be a whole number of files (2.5M of
10M with 4 files). Each size runs ``clam-dist pipeline --set data.url=...`` in its own
process with embedded Ray (every core), with only the model settings below changed
from the defaults. ``--readme-defaults`` runs instead only the largest size with nothing
but ``data.url`` set (the README's ClAM at k = 16, 3 epochs, batch 1,024).

Peak RSS per process: a sampler polls the pipeline process and all its descendants every
0.25 s and keeps each process's largest RSS, keyed by its role (driver, train worker,
assignment actor, Ray's own daemons) read from the process title Ray sets. Beside it the
largest PRIVATE resident memory (RSS less its shared pages, ``psutil``'s ``shared``:
file-backed and shared-memory pages): a Ray worker that reads blocks zero-copy from the
object store (an mmap of shared memory) counts every page of them it touches in its RSS,
although they belong to the object store and are counted once for the node.

``--set section.key=value`` (repeatable) adds a pipeline setting after the ones above
(e.g. ``--set model.coarse_clusters=256`` for a two-level model); with ``--only-set`` the
``--set`` values are the only settings (the pipeline's defaults otherwise: ClAM, 3 epochs,
batch 1,024), e.g. issue 28's command ``--only-set --set model.n_clusters=65536 --set
model.coarse_clusters=256``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

GROUP_ROWS = 131_072
CHUNK_ROWS = 524_288  # rows generated at once (256 MB at d = 128)


def write_mixture(root: Path, n: int, d: int, components: int, files: int, seed: int) -> None:
    """``files`` Parquet files of n / files rows each: a mixture of ``components``
    Gaussians of uneven weight and spread, columns id (int64), x (float32 list), label."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.0, (components, d)).astype(np.float32)
    spread = rng.uniform(0.3, 0.7, components).astype(np.float32)
    weights = rng.dirichlet(np.full(components, 2.0))
    root.mkdir(parents=True, exist_ok=True)
    per_file = n // files
    schema = pa.schema(
        [("id", pa.int64()), ("x", pa.list_(pa.float32(), d)), ("label", pa.int32())]
    )
    next_id = 0
    for f in range(files):
        path = root / f"part-{f:05d}.parquet"
        tmp = root / f".part-{f:05d}.parquet.tmp"
        with pq.ParquetWriter(tmp, schema) as writer:
            for r0 in range(0, per_file, CHUNK_ROWS):
                m = min(CHUNK_ROWS, per_file - r0)
                label = rng.choice(components, m, p=weights).astype(np.int32)
                x = rng.standard_normal((m, d), dtype=np.float32)
                x *= spread[label, None]
                x += centers[label]
                table = pa.table(
                    {
                        "id": np.arange(next_id, next_id + m, dtype=np.int64),
                        "x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d),
                        "label": label,
                    },
                    schema=schema,
                )
                writer.write_table(table, row_group_size=GROUP_ROWS)
                next_id += m
        tmp.rename(path)


def _role(proc: psutil.Process, driver: int) -> str:
    if proc.pid == driver:
        return "driver"
    try:
        name, title = proc.name(), " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    if name in ("raylet", "gcs_server"):
        return name
    for key, role in (
        ("RayTrainWorker", "train worker"),
        ("ClusterAssigner", "assignment worker"),
        ("MapBatches", "assignment worker"),
        ("_shuffle_unit", "shuffle task"),
        ("_fit_one_cell", "cell task"),
        ("ReadParquet", "read task"),
        ("_read_units", "read task"),
        ("dashboard", "dashboard"),
        ("log_monitor", "log monitor"),
        ("ray::", "ray worker (other task)"),
        ("default_worker.py", "ray worker (other task)"),
    ):
        if key in title:
            return role
    return "other"


class PeakRSS:
    """Largest RSS seen per (process, role): Ray reuses a worker process for task after
    task (a two-level run's shuffle, cell and assignment tasks can share one), so each
    sample is credited to the role the process's title names at that moment (``ray::IDLE``
    between tasks: "ray worker (other task)")."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        self.pid, self.every = pid, every
        self.peak: dict[tuple[int, str], int] = {}
        self.peak_private: dict[tuple[int, str], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for p in procs:
                try:
                    mem = p.memory_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                role = _role(p, self.pid)
                if role == "gone":
                    continue
                key = (p.pid, role)
                self.peak[key] = max(mem.rss, self.peak.get(key, 0))
                private = mem.rss - mem.shared
                self.peak_private[key] = max(private, self.peak_private.get(key, 0))
            self._stop.wait(self.every)

    def by_role(self, private: bool = False) -> dict[str, list[float]]:
        """Role -> peak RSS (``private``: peak RSS less shared pages) in MB of each process
        with that role, largest first."""
        out: dict[str, list[float]] = {}
        for (_, role), rss in (self.peak_private if private else self.peak).items():
            out.setdefault(role, []).append(round(rss / 2**20, 1))
        return {role: sorted(v, reverse=True) for role, v in sorted(out.items())}


def run_pipeline(run_dir: Path, data_url: str, sets: list[str], log: Path) -> dict:
    cmd = [sys.executable, "-m", "clam_dist", "pipeline", "--fresh", "--run-dir", str(run_dir)]
    cmd += ["--set", f"data.url={data_url}"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        with PeakRSS(proc.pid) as rss:
            code = proc.wait()
    wall = time.perf_counter() - t0
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if code != 0:
        tail = log.read_text().splitlines()[-5:]
        raise SystemExit(f"pipeline failed (exit {code}) for {data_url}: {tail}")
    return {
        "wall_s": round(wall, 1),
        "summary": summary,
        "peak_rss_mb": rss.by_role(),
        "peak_private_mb": rss.by_role(private=True),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="2500000,10000000")
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--k", type=int, default=1024)
    p.add_argument("--components", type=int, default=0, help="mixture components (0 = k)")
    p.add_argument("--method", default="kmeans")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument(
        "--batch-size",
        type=int,
        default=65536,
        help="rows per worker per step (the pipeline default, 1024, makes k = 1,024 "
        "mini-batch k-means step-overhead bound: 56k rows/s)",
    )
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--root", default="/tmp/clam-scale")
    p.add_argument("--readme-defaults", action="store_true")
    p.add_argument("--json", default="bench_results/scale.json")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument(
        "--only-set", action="store_true", help="the --set values only (no method, k, epochs)"
    )
    args = p.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    n_max = sizes[-1]
    per_file = n_max // args.files
    bad = [s for s in sizes if s % per_file]
    if bad:
        raise SystemExit(f"sizes {bad} are not whole numbers of files of {per_file} rows")
    root = Path(args.root)
    data_all = root / f"data-{n_max}x{args.d}"
    t0 = time.perf_counter()
    if not (data_all / f"part-{args.files - 1:05d}.parquet").exists():
        write_mixture(data_all, n_max, args.d, args.components or args.k, args.files, seed=0)
    gen_s = time.perf_counter() - t0
    print(f"data: {data_all} ({n_max:,} rows, generated in {gen_s:.0f} s)", flush=True)

    sets = [
        f"model.method={args.method}",
        f"model.n_clusters={args.k}",
        f"optim.epochs={args.epochs}",
        f"optim.batch_size={args.batch_size}",
        *args.set,
    ]
    if args.only_set:
        sets = list(args.set)
    results = []
    for n in [] if args.readme_defaults else sizes:
        data = data_all
        if n < n_max:  # the first files of the big set, linked (not copied)
            data = root / f"data-{n}x{args.d}"
            data.mkdir(exist_ok=True)
            for f in range(n // per_file):
                link = data / f"part-{f:05d}.parquet"
                if not link.exists():
                    os.symlink(data_all / link.name, link)
        label = "only-set" if args.only_set else f"{args.method}-k{args.k}"
        run_dir = root / f"run-{n}-{label}"
        res = run_pipeline(run_dir, str(data), sets, root / f"log-{n}.txt")
        results.append({"rows": n, "settings": sets, **res})
        print(f"{n:,} rows: {res['wall_s']} s", flush=True)
    if args.readme_defaults:
        run_dir = root / f"run-{n_max}-readme-defaults"
        res = run_pipeline(run_dir, str(data_all), [], root / "log-defaults.txt")
        results.append({"rows": n_max, "settings": ["(README defaults)"], **res})

    _print_table(results)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "generate_s": gen_s, "runs": results}, indent=2))
    print(f"wrote {out}")


def _print_table(results: list[dict]) -> None:
    stages = ("data", "train", "assign", "evaluate")
    print("\n| rows | settings | " + " | ".join(f"{s} s" for s in stages) + " | total s | rows/s |")
    print("| --- | --- | " + " | ".join("---" for _ in stages) + " | --- | --- |")
    for r in results:
        st = r["summary"].get("stages", {})
        secs = [st.get(s, {}).get("seconds", float("nan")) for s in stages]
        total = r["summary"].get("seconds", r["wall_s"])
        print(
            f"| {r['rows']:,} | {' '.join(r['settings'])} | "
            + " | ".join(f"{s:.1f}" for s in secs)
            + f" | {total:.1f} | {r['rows'] / total:,.0f} |"
        )
    roles = sorted({role for r in results for role in r["peak_rss_mb"]})
    for key, what in (("peak_rss_mb", "RSS"), ("peak_private_mb", "private (RSS - shared)")):
        print(f"\nPeak {what} per process, MB (largest first):")
        print("| role | " + " | ".join(f"{r['rows']:,} rows" for r in results) + " |")
        print("| --- | " + " | ".join("---" for _ in results) + " |")
        for role in roles:
            cells = [", ".join(f"{v:.0f}" for v in r[key].get(role, [])[:4]) for r in results]
            print(f"| {role} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
