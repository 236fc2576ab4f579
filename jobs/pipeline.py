"""End-to-end pipeline (data -> train -> assign -> evaluate -> report).

    python jobs/pipeline.py [--config cfg.toml] [--run-dir runs/x] [--set model.n_clusters=32]

Exit code 0 on success; <run-dir>/summary.json has per-stage timings and the metrics.
"""

import sys

from clam_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
