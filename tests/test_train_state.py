"""The training loop's pieces without Ray: the checkpointed TrainState round-trips, and
the typed worker config carries arrays as object-store references, never as lists."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from clam_dist.config import load_config
from clam_dist.train.config import TrainConfig
from clam_dist.train.state import TrainState
from clam_dist.train.worker_config import (
    LoopConfig,
    StepPlan,
    build_loop_config,
    init_arrays,
    init_jsonable,
)


def test_train_state_round_trips_through_its_state_dict():
    state = TrainState(
        epoch=3,
        step_in_epoch=7,
        global_step=43,
        epoch_sums=[12.5, 700.0, -3.25],
        history=[{"loss": 0.5, "step": 40, "rows_per_s_worker": [1.0, 2.0]}],
    )
    restored = TrainState()
    restored.load_state_dict(state.state_dict())
    assert restored == state


def test_train_state_dict_is_the_checkpoint_layout_and_json():
    import json

    sd = TrainState(epoch=1, step_in_epoch=2, global_step=9).state_dict()
    assert json.loads(json.dumps(sd)) == sd
    assert sd["data_position"] == {"epoch": 1, "step": 2} and sd["global_step"] == 9
    # an older checkpoint's data position carries the lane plan too: it is ignored
    sd["data_position"].update(lanes=2, lane_batch=100, seed=0)
    restored = TrainState()
    restored.load_state_dict(sd)
    assert (restored.epoch, restored.step_in_epoch, restored.global_step) == (1, 2, 9)


def test_train_state_epochs_sum_windows_and_reset():
    state = TrainState()
    state.add_window([2.0, 4.0, 1.0])
    state.add_window([1.0, 2.0, 0.5])
    assert state.epoch_loss() == 0.5
    state.step_in_epoch = 6
    state.next_epoch()
    assert (state.epoch, state.step_in_epoch, state.epoch_sums) == (1, 0, [0.0, 0.0, 0.0])


class _Store:
    """ray.put / ray.get stand-ins: references are small keys."""

    def __init__(self):
        self.objects: dict[int, object] = {}

    def put(self, value):
        self.objects[len(self.objects)] = value
        return len(self.objects) - 1

    def get(self, ref):
        return self.objects[ref]


def _init(k: int, d: int) -> dict:
    rng = np.random.default_rng(0)
    return {  # as sources.initialise returns it: lists
        "prototypes": rng.standard_normal((k, d)).astype(np.float32).tolist(),
        "beta": 2.5,
        "mean": rng.standard_normal(d).tolist(),
        "scale": (rng.random(d) + 0.5).tolist(),
        "fill": np.zeros(d, np.float32).tolist(),
        "rows": 1000,
    }


def test_loop_config_is_typed_and_puts_arrays_in_the_store():
    cfg = load_config(TrainConfig, None, ["model.n_clusters=256", "optim.epochs=2"])
    init, store = _init(256, 64), _Store()
    sample = np.random.default_rng(1).standard_normal((500, 64)).astype(np.float32)
    plan = {"steps_per_epoch": [3, 4], "total_steps": 7, "files": 2}
    loop = build_loop_config(cfg, init, plan, "/runs", sample, put=store.put)
    ray_config = loop.to_ray()
    assert LoopConfig.from_ray(ray_config) is loop
    assert isinstance(loop.train, TrainConfig) and loop.train.optim.epochs == 2
    assert loop.plan == StepPlan((3, 4), 7)
    # the config itself holds no vectors: ~k*d floats would be ~500 KB pickled
    assert len(pickle.dumps(ray_config)) < 10_000
    got = loop.load_init(store.get)
    assert got["prototypes"].dtype == np.float32 and got["prototypes"].shape == (256, 64)
    # exact: what the workers build from the arrays equals what they built from lists
    for key in ("prototypes", "mean", "scale", "fill"):
        assert torch.equal(
            torch.tensor(got[key], dtype=torch.float32),
            torch.tensor(init[key], dtype=torch.float32),
        ), key
    assert got["beta"] == 2.5 and got["rows"] == 1000
    loaded = loop.load_sample(store.get)
    assert np.array_equal(loaded, sample) and loaded.flags.writeable


def test_loop_config_without_sample_and_init_back_to_json():
    cfg = load_config(TrainConfig, None, [])
    init, store = _init(4, 3), _Store()
    loop = build_loop_config(
        cfg, init, {"steps_per_epoch": [1], "total_steps": 1}, "/r", None, store.put
    )
    assert loop.sample is None and loop.load_sample(store.get) is None
    assert len(store.objects) == 1
    # state.json's "init": the original lists, without the prototypes
    back = init_jsonable(init_arrays(init))
    assert back == {key: v for key, v in init.items() if key != "prototypes"}


def test_loop_config_is_frozen():
    loop = LoopConfig(TrainConfig(), StepPlan((1,), 1), "/r", init=0)
    with pytest.raises(AttributeError):
        loop.run_url = "/elsewhere"  # type: ignore[misc]


def test_the_kept_epoch_state_is_standard_json_and_round_trips():
    import json
    import math

    import torch

    from clam_dist.methods.clam.objective import ClAMObjective

    init = {"prototypes": [[0.0, 0.0], [1.0, 1.0]], "beta": 2.0, "fill": [0.0, 0.0]}
    objective = ClAMObjective(TrainConfig(), init, torch.device("cpu"))
    # No epoch kept yet: null, not Infinity (json.dumps would write a non-standard token).
    text = json.dumps(objective.state(), allow_nan=False)
    fresh = ClAMObjective(TrainConfig(), init, torch.device("cpu"))
    fresh.load_state(json.loads(text))
    assert fresh.kept_loss == math.inf and fresh.kept_epoch is None
    objective.consider_epoch(0, 0.5, comparable=True)
    objective.consider_epoch(1, 0.7, comparable=True)  # higher: not kept
    objective.consider_epoch(2, 0.1, comparable=False)  # lower, but not comparable
    fresh.load_state(json.loads(json.dumps(objective.state(), allow_nan=False)))
    assert (fresh.kept_epoch, fresh.kept_loss) == (0, 0.5)
