"""Model selection with Ray Tune (embedded local Ray, or `ray job submit -- python jobs/tune.py ...`).

python jobs/tune.py --dataset ecoli --samples 16 --output runs/tune/best.toml
python jobs/tune.py --dataset ecoli --set model.method=dcam --output runs/tune/dcam.toml  # or attention
Exit code 0 on success, 2 for a config or search space that does not validate (before any work).
"""

import sys

from clam_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
