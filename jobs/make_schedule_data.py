"""Daily partitions of a drifting mixture, for trying `clam-dist run-partition`:

    python jobs/make_schedule_data.py --days 3 --out runs/schedule/data

writes ``<out>/dt=2026-12-01/``, ``dt=2026-12-02/``, ... (Parquet: ``x``, ``id``,
``label``). The mixture (clam_dist/datasets/drifting.py) is the same every day, except
that from ``--move-day`` on three components sit elsewhere and from ``--new-day`` on two
new components appear.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clam_dist.data.writer import write_vectors  # noqa: E402
from clam_dist.datasets.drifting import DriftingStream, day_key  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="runs/schedule/data")
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--move-day", type=int, default=3)
    p.add_argument("--new-day", type=int, default=3)
    args = p.parse_args()
    stream = DriftingStream(
        d=args.d, k=args.k, rows=args.rows, move_day=args.move_day, new_day=args.new_day
    )
    for day in range(1, args.days + 1):
        x, labels, ids = stream.partition(day)
        url = f"{args.out}/dt={day_key(day)}"
        write_vectors(url, x, ids=ids, labels=labels, rows_per_file=25_000)
        print(f"{url}: {len(x):,} rows")


if __name__ == "__main__":
    main()
