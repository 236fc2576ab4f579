"""In-context quantization as a Ray Data map_batches stage: the batch operator on its own,
then one real local Ray run where every batch (context) is quantized independently."""

from __future__ import annotations

import numpy as np
import pytest

from clam_dist.assign.quantize import QuantizeBatches, quantize_dataset


def context(seed: int, k: int = 3, n_per: int = 20, d: int = 4, sep: float = 10.0):
    rng = np.random.default_rng(seed)
    centres = np.zeros((k, d))
    centres[np.arange(k), np.arange(k) % d] = sep
    x = np.concatenate([c + rng.normal(size=(n_per, d)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(k), n_per), centres


def test_operator_groups_a_batch_and_keeps_its_columns():
    x, labels, centres = context(0)
    out = QuantizeBatches()({"x": x, "id": np.arange(len(x))})
    np.testing.assert_array_equal(out["id"], np.arange(len(x)))
    assert out["group"].dtype == np.int64 and len(np.unique(out["group"])) == 3
    # one group per generating cluster, and group sizes reported per row
    for c in range(3):
        assert len(np.unique(out["group"][labels == c])) == 1
    np.testing.assert_array_equal(out["group_size"], np.full(len(x), 20))
    rep = out["representative"]
    assert rep.shape == x.shape and rep.dtype == np.float32
    assert np.linalg.norm(rep - centres[labels], axis=1).max() < 1.0
    idx = QuantizeBatches(representative="index")({"x": x})["representative"]
    assert idx.dtype == np.int64 and set(np.unique(idx)) == {0, 20, 40}  # each group's first row


def test_operator_bad_input():
    with pytest.raises(KeyError, match="no column 'x'"):
        QuantizeBatches()({"data": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="NaN/inf"):
        QuantizeBatches()({"x": np.array([[0.0, np.nan], [1.0, 1.0]], dtype=np.float32)})
    with pytest.raises(
        ValueError, match="context of 60 rows x 4 dims is larger than max_context=50"
    ):
        QuantizeBatches(max_context=50)({"x": context(1)[0]})
    with pytest.raises(ValueError, match="beta must be"):
        QuantizeBatches(beta=-1.0)
    with pytest.raises(ValueError, match="must be numeric"):
        QuantizeBatches()({"x": np.array(["a", "b"])})
    with pytest.raises(ValueError, match="context_rows=100 exceeds max_context=50"):
        quantize_dataset(None, 100, max_context=50)


@pytest.mark.ray
def test_ray_data_stage_quantizes_each_context_independently(ray_local):
    import ray

    # Two contexts of 60 rows each; the second is the first shifted far away, so a global
    # quantization would differ from per-context quantization only in the group ids.
    a, labels, _ = context(2)
    b = a + 100.0
    rows = [{"id": i, "x": row} for i, row in enumerate(np.concatenate([a, b]))]
    ds = ray.data.from_items(rows, override_num_blocks=2)
    out = quantize_dataset(ds, context_rows=60).take_all()
    assert sorted(r["id"] for r in out) == list(range(120))
    by_id = {r["id"]: r for r in out}
    for offset in (0, 60):
        groups = np.array([by_id[offset + i]["group"] for i in range(60)])
        assert set(groups) == {0, 1, 2}  # local ids restart in every context
        for c in range(3):
            assert len(np.unique(groups[labels == c])) == 1

    # from_numpy names its column "data": the column is configurable.
    ds2 = ray.data.from_numpy(a)
    out2 = quantize_dataset(ds2, context_rows=60, column="data", representative="index").take_all()
    assert len(out2) == 60 and len({int(r["group"]) for r in out2}) == 3
