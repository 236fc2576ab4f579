"""Write sharded Parquet (Gaussian mixture at scale, or a bundled paper data set).

python jobs/make_dataset.py ./data/mix --n 1000000 --d 64 --k 50
python jobs/make_dataset.py s3://bucket/ecoli --source ecoli --endpoint-url http://127.0.0.1:9000
"""

import sys

from clam_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["make-dataset", *sys.argv[1:]]))
