"""Quality benchmark: ClAM vs k-means on the seven ClAM-paper data sets.

python jobs/bench_quality.py [--datasets ecoli,zoo] [--json bench_results/quality.json]
"""

import sys

from clam_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["quality", *sys.argv[1:]]))
