"""Train rows into fixed-shape chunks: the buckets, the plan, the arrays and their weights."""

import ml_collections
import numpy as np
import pytest

from zppo_jax.rl import batching
from zppo_jax import train_step as ts


def test_length_buckets():
  assert batching.length_buckets(512, 64) == (64, 128, 192, 256, 320, 384, 448, 512)
  assert batching.length_buckets(500, 64)[-1] == 512
  long = batching.length_buckets(12288, 128)
  assert long[:9] == (128, 256, 384, 512, 640, 768, 896, 1024, 1280)
  assert long[-3:] == (8192, 10240, 12288) and len(long) == 22
  # past 8 steps, a bucket is at most a quarter longer than the one below
  assert all(b / a <= 1.25 for a, b in zip(long[7:], long[8:]))
  with pytest.raises(ValueError, match="step >= 1"):
    batching.length_buckets(512, 0)


def test_plan_groups_rows_by_length():
  lengths = [10, 300, 70, 200, 65, 5]
  plan = batching.plan(lengths, chunk_rows=2, buckets=(64, 128, 256, 320))
  assert plan == [([1, 3], 320), ([2, 4], 128), ([0, 5], 64)]
  with pytest.raises(ValueError, match="longer than the largest length bucket 128"):
    batching.plan([129], 2, (64, 128))


def _rows():
  return [batching.Row([1, 2], [7] * 5, [-0.5] * 5, 1.0),                 # 7 tokens
          batching.Row([3] * 10, [8] * 6, [-1.0] * 6, -1.0, truncated=True),  # 16 tokens
          batching.Row([4], [9], [-2.0], 0.5, off_policy=True)]             # 2 tokens


def test_make_chunks_pads_each_chunk_to_its_bucket():
  chunks = batching.make_chunks(_rows(), chunk_rows=2, buckets=(8, 16), pad_id=0)
  assert [c["tokens"].shape for c in chunks] == [(2, 16), (2, 8)]
  first, second = chunks
  # longest first: the 16-token row, then the 7-token one; loss only on completions
  np.testing.assert_array_equal(first["tokens"][0], [3] * 10 + [8] * 6)
  np.testing.assert_array_equal(first["loss_mask"][0], [0] * 10 + [1] * 6)
  np.testing.assert_array_equal(first["loss_mask"][1, :8], [0, 0, 1, 1, 1, 1, 1, 0])
  np.testing.assert_array_equal(first["sampler_logprobs"][1, 2:7], [-0.5] * 5)
  assert first["truncated"].tolist() == [True, False]
  assert first["advantages"].tolist() == [-1.0, 1.0]
  # the last chunk has one row and one padding row that trains on nothing
  assert second["real"].tolist() == [True, False] and second["off_policy"].tolist()[0]
  assert second["attention_mask"][1].sum() == 0 and second["loss_mask"][1].sum() == 0


@pytest.mark.parametrize("mode,want", [
    ("token_mean", [1 / 12] * 3),
    ("sequence_mean", [1 / 18, 1 / 15, 1 / 3]),
    ("constant", [1 / 30] * 3)])
def test_weigh_rows_over_all_chunks(mode, want):
  """Weights come from every row of every chunk (6 + 5 + 1 loss tokens), padding rows
  weigh nothing; `real` is consumed."""
  loss = ml_collections.ConfigDict(dict(aggregation=mode, max_tokens=0, mask_truncated=False))
  chunks = ts.weigh_rows(
      batching.make_chunks(_rows(), chunk_rows=2, buckets=(8, 16), pad_id=0), loss, 10)
  got = np.concatenate([c["row_weights"] for c in chunks])
  np.testing.assert_allclose(got, want + [0.0], rtol=1e-6)
  assert all("real" not in c for c in chunks)
  # truncated rows masked: the 16-token row drops out of the counts
  loss.mask_truncated = True
  chunks = ts.weigh_rows(
      batching.make_chunks(_rows(), chunk_rows=2, buckets=(8, 16), pad_id=0), loss, 10)
  if mode == "token_mean":
    np.testing.assert_allclose(chunks[0]["row_weights"], [1 / 6, 1 / 6], rtol=1e-6)
