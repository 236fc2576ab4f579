"""Model selection with Ray Tune: search the hyper-parameters of ClAM, attention clustering
or DCAM (model.method) on a sample, ASHA early stopping, an unsupervised score, the best
configuration written as a training config."""

from clam_dist.tune.config import TuneJobConfig
from clam_dist.tune.space import SearchSpaceError, check_search_space

__all__ = ["SearchSpaceError", "TuneJobConfig", "check_search_space"]
