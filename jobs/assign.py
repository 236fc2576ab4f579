"""Thin entrypoint for `ray job submit -- python jobs/assign.py ...` (see --help)."""

import sys

from clam_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["assign", *sys.argv[1:]]))
