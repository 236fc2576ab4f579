"""One scheduled partition: assign it with the registry's champion, measure drift, refresh
the model when the data moved (``clam-dist run-partition``).

    python jobs/run_partition.py --registry s3://bucket/registry --name events \
        --partition 2026-12-02 --input s3://bucket/events/dt=2026-12-02 \
        [--config cfg.toml] [--set SECTION.FIELD=VALUE ...] [--summary summary.json]

Exit code 0 on success, 2 on bad input (refused before any work), 1 on a failed job;
--summary writes JSON with assignments, model_version, refreshed, promoted, drift_share.
Schedulers call it through infra/cron/submit_partition.sh (see infra/README.md).
"""

import sys

from clam_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["run-partition", *sys.argv[1:]]))
