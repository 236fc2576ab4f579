"""Distributed training entrypoint (embedded local Ray, or `ray job submit -- python jobs/train.py ...`).

python jobs/train.py --data ./data/mix --k 32 --workers 2 --set optim.epochs=5
"""

import sys

from clam_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
