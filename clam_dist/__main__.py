import sys

from clam_dist.cli import main

sys.exit(main())
