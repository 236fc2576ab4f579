"""Thin entrypoint for `ray job submit -- python jobs/evaluate.py ...` (see --help)."""

import sys

from clam_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
