"""Read throughput and memory of the streaming reader, local disk vs the local S3 server.

For each size (GB of float32 vectors) a Gaussian mixture is written to a local folder and
to a moto S3 server on 127.0.0.1; for each reader a fresh subprocess reads every row and
reports rows/s, MB/s and its own peak RSS (flat memory = streaming). Readers:

- ``iter_batches``: the streaming reader (data/stream.py);
- ``training``: the training lane reader: LaneStream batches of ``batch_rows`` rows, each
  copied once into a float32 training buffer, read ahead by the prefetch thread, with
  ``--read-threads`` row groups decoded at once (default: the trainer's data.read_threads);
- ``pq.read_table``: pyarrow's own whole-file reader on the same files (the ceiling).

The table ends with training / pq.read_table throughput per store (target >= 80%).

    python jobs/bench_read.py [--sizes-gb 0.5,2 --d 128 --rows-per-file 250000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Measure THIS checkout's reader, not whatever clam_dist happens to be installed.
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


READERS = ("iter_batches", "training", "pq.read_table")


def _batches(reader: str, source, batch_rows: int, read_threads: int = 1):
    """(file or None, rows, float32 bytes) per batch of the named reader."""
    if reader == "iter_batches":
        from clam_dist.data.stream import iter_batches

        for b in iter_batches(source, batch_rows=batch_rows, shuffle=False):
            yield b.file, len(b), b.x.nbytes
    elif reader == "training":
        import math

        from clam_dist.train.step import LaneStream, prefetch_steps

        steps = math.ceil(source.num_rows() / batch_rows)
        lane = LaneStream(
            source, 0, 1, epoch=0, seed=0, read_rows=batch_rows, read_threads=read_threads
        )
        with prefetch_steps([lane], batch_rows, steps, reuse_buffers=True) as reader_:
            for x, _ in reader_:
                yield None, len(x), x.nbytes
    elif reader == "pq.read_table":
        import pyarrow.parquet as pq

        # The same column the other readers decode (the vectors), whole files at a time
        # with pyarrow's own threading: the fastest pyarrow path to these bytes.
        vec = source.resolve_columns()[0]
        fs = source.filesystem()
        for f in source.files():
            table = pq.read_table(f, columns=[vec], filesystem=fs)
            yield f, table.num_rows, table.column(vec).nbytes
    else:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")


def read_once(
    url: str,
    storage_options: dict | None,
    batch_rows: int,
    reader: str = "iter_batches",
    read_threads: int = 1,
) -> dict:
    from clam_dist.data.source import VectorSource

    source = VectorSource(url, storage_options=storage_options)
    source.files()
    source.num_rows()  # footers read before the clock starts, for every reader alike
    source.dim()
    if reader == "training":
        import clam_dist.train.step  # noqa: F401  (imports torch: not part of reading)
    rss_before = current_rss_mb()  # interpreter + numpy/pyarrow/s3fs, before any data
    t0 = time.perf_counter()
    rows = nbytes = 0
    first_file, peak_after_first_file = None, None
    for file, n, size in _batches(reader, source, batch_rows, read_threads):
        if first_file is None:
            first_file = file
        elif peak_after_first_file is None and file != first_file:
            # Flat memory means this early high-water mark is already the final one.
            peak_after_first_file = peak_rss_mb()
        rows += n
        nbytes += size
    seconds = time.perf_counter() - t0
    return {
        "reader": reader,
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "mb_per_s": nbytes / seconds / 1e6,
        "rss_before_read_mb": rss_before,
        "peak_rss_after_first_file_mb": peak_after_first_file or peak_rss_mb(),
        "peak_rss_mb": peak_rss_mb(),
    }


def current_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float:
    """This process's own peak RSS. VmHWM belongs to the current address space, unlike
    ru_maxrss, which on Linux keeps the pre-exec high-water mark of the forking parent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(
    url: str, storage_options: dict | None, batch_rows: int, reader: str, read_threads: int
) -> dict:
    """Run the read in a fresh process so its peak RSS is the reader's alone."""
    code = (
        "import json,sys; from bench_read import read_once; print(json.dumps(read_once("
        "sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))))"
    )
    jobs_dir = Path(__file__).resolve().parent
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            url,
            json.dumps(storage_options),
            str(batch_rows),
            reader,
            str(read_threads),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=jobs_dir,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(jobs_dir)])},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes-gb", default="0.5,2")
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--rows-per-file", type=int, default=250_000)
    p.add_argument("--batch-rows", type=int, default=65_536)
    p.add_argument(
        "--read-threads",
        type=int,
        default=None,
        help="row groups the training reader decodes at once (default: data.read_threads)",
    )
    p.add_argument("--no-s3", action="store_true", help="skip the local S3 server")
    p.add_argument("--readers", default=",".join(READERS), help=f"any of {READERS}")
    p.add_argument("--repeats", type=int, default=1, help="best of N runs per reader")
    p.add_argument("--json", default="bench_results/read.json")
    args = p.parse_args()
    from clam_dist.commands.make_dataset import write_mixture

    readers = args.readers.split(",")
    if args.read_threads is None:
        from clam_dist.train.config import TrainData

        args.read_threads = TrainData().read_threads

    def best_of(url, opts) -> list[dict]:
        """Best run per reader; readers alternate within each repeat so a machine that
        gets busier during the run does not favour whichever reader went first."""
        runs = {r: [] for r in readers}
        for _ in range(args.repeats):
            for reader in readers:
                runs[reader].append(measure(url, opts, args.batch_rows, reader, args.read_threads))
        return [max(runs[r], key=lambda m: m["rows_per_s"]) for r in readers]

    results = []
    for gb in [float(s) for s in args.sizes_gb.split(",")]:
        n = int(gb * 1e9 / (4 * args.d))
        tmp = tempfile.mkdtemp()
        try:
            write_mixture(f"{tmp}/data", n, args.d, 16, 8.0, 0, args.rows_per_file)
            on_disk = sum(f.stat().st_size for f in Path(tmp, "data").glob("*.parquet"))
            print(f"{gb} GB: {n} rows, {on_disk / 1e9:.2f} GB of Parquet", flush=True)
            for run in best_of(f"{tmp}/data", None):
                results.append({"gb": gb, "store": "local disk", **run})
                print(results[-1], flush=True)
            if not args.no_s3:
                from clam_dist.data.local_s3 import local_s3

                with local_s3(bucket="bench") as s3:
                    import s3fs

                    fs = s3fs.S3FileSystem(**s3.storage_options)
                    fs.put(f"{tmp}/data", f"bench/data-{gb}", recursive=True)
                    for run in best_of(s3.url(f"data-{gb}"), s3.storage_options):
                        results.append({"gb": gb, "store": "local S3 (moto)", **run})
                        print(results[-1], flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"\nd={args.d}, batch_rows={args.batch_rows}, rows_per_file={args.rows_per_file}, "
        f"training reader read_threads={args.read_threads}"
    )
    print(
        f"{'GB':>5s} {'store':16s} {'reader':14s} {'rows':>10s} {'rows/s':>10s} {'MB/s':>8s} "
        f"{'RSS before MB':>14s} {'peak@file1 MB':>14s} {'peak RSS MB':>12s}"
    )
    for r in results:
        print(
            f"{r['gb']:5.2f} {r['store']:16s} {r['reader']:14s} {r['rows']:10d} {r['rows_per_s']:10.0f} "
            f"{r['mb_per_s']:8.1f} {r['rss_before_read_mb']:14.0f} "
            f"{r['peak_rss_after_first_file_mb']:14.0f} {r['peak_rss_mb']:12.0f}"
        )
    print(
        "MB/s counts decoded float32 vector bytes. RSS is the reading process's own: before "
        "reading, high-water mark once the first file is done, and at the end."
    )
    ratios = []
    for r in results:
        if r["reader"] != "training":
            continue
        base = [
            b
            for b in results
            if b["reader"] == "pq.read_table" and (b["gb"], b["store"]) == (r["gb"], r["store"])
        ]
        if base:
            ratio = r["rows_per_s"] / base[0]["rows_per_s"]
            ratios.append({"gb": r["gb"], "store": r["store"], "training_vs_read_table": ratio})
            print(
                f"{r['gb']:5.2f} {r['store']:16s} training reader = {100 * ratio:.0f}% of "
                f"pq.read_table throughput (target >= 80%)"
            )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results, "ratios": ratios}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
