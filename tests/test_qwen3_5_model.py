"""Logits of the JAX Qwen3.5 against transformers (float32, CPU), with cache and padding."""

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import TINY, make_text_model

from zppo_jax.models import qwen3_5
from zppo_jax.models.qwen3_5 import layers

ATOL = 1e-4


@functools.partial(jax.jit, static_argnums=0, static_argnames="chunk_size")
def _forward(config, params, ids, mask=None, chunk_size=16):
  return qwen3_5.forward(config, params, ids, mask, chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnums=0)
def _apply(config, params, ids, mask, cache):
  return qwen3_5.apply(config, params, ids, mask, cache, chunk_size=16)


def _hf_logits(model, ids, mask=None, positions=None):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(np.asarray(ids)),
                attention_mask=None if mask is None else torch.tensor(np.asarray(mask)),
                position_ids=None if positions is None else torch.tensor(np.asarray(positions)))
  return out.logits.float().numpy()


def _ids(config, batch, length, seed=0):
  return np.random.RandomState(seed).randint(0, config.vocab_size, (batch, length))


def test_logits_match_transformers(hf_text):
  model, path = hf_text
  config, params = qwen3_5.load_hf_checkpoint(path)
  ids = _ids(config, 2, 45)  # not a multiple of the chunk size
  ref = _hf_logits(model, ids)
  assert np.abs(ref).max() > 0.5  # logits large enough for the tolerance to mean something
  np.testing.assert_allclose(_forward(config, params, ids), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("layer_type", ["linear_attention", "full_attention"])
def test_models_of_one_layer_type(layer_type, tmp_path):
  """No layer of the other type: its parameter and cache stacks are empty."""
  model = make_text_model("irregular", num_hidden_layers=2, layer_types=[layer_type] * 2)
  model.save_pretrained(tmp_path)
  config, params = qwen3_5.load_hf_checkpoint(str(tmp_path))
  ids = _ids(config, 2, 19)
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids), use_cache=False).logits.numpy()
  np.testing.assert_allclose(_forward(config, params, ids), ref, atol=ATOL, rtol=0)
  cache = qwen3_5.init_cache(config, batch=2, max_len=19)
  _, cache = _apply(config, params, ids[:, :18], np.ones((2, 18)), cache)
  logits, _ = _apply(config, params, ids[:, 18:], np.ones((2, 1)), cache)
  np.testing.assert_allclose(logits[:, 0], ref[:, 18], atol=ATOL, rtol=0)


def test_long_sequence_spans_several_query_blocks(hf_text):
  model, path = hf_text
  config, params = qwen3_5.load_hf_checkpoint(path)
  ids = _ids(config, 1, 2 * layers.QUERY_BLOCK + 37, seed=5)
  # Over 1000 tokens float32 sums in a different order drift slightly more: a relative term.
  np.testing.assert_allclose(_forward(config, params, ids, chunk_size=64), _hf_logits(model, ids),
                             atol=ATOL, rtol=1e-3)


def test_query_blocks_do_not_change_attention():
  config = qwen3_5.from_hf_dict(dict(TINY["periodic"], model_type="qwen3_5_text"))
  p = jax.tree.map(lambda x: x[0], qwen3_5.init_params(config, jax.random.key(0), std=0.2)["full"])
  x = jax.random.normal(jax.random.key(1), (2, 21, config.hidden_size))
  cos, sin = layers.rope(jnp.arange(21)[None], config, jnp.float32)
  causal = jnp.tril(jnp.ones((21, 21), bool))[None].repeat(2, 0)
  causal = causal.at[1, :, :4].set(False) | jnp.eye(21, dtype=bool)  # padding in one row
  cached = (jnp.zeros((2, config.num_key_value_heads, 30, config.head_dim)),) * 2 + (3,)
  cache_mask = jnp.zeros((2, 21, 30), bool).at[:, :, 3:24].set(causal)
  for kv_cache, mask in ((None, causal), (cached, cache_mask)):
    ref, _ = layers.full_attention(p, x, cos, sin, config, kv_cache=kv_cache, kv_mask=mask,
                                   query_block=1000)
    out, _ = layers.full_attention(p, x, cos, sin, config, kv_cache=kv_cache, kv_mask=mask,
                                   query_block=8)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


def test_prefill_then_decode_equals_full_forward(hf_text):
  model, path = hf_text
  config, params = qwen3_5.load_hf_checkpoint(path)
  ids = _ids(config, 2, 28, seed=1)
  prompt, steps = 20, 8
  full = _hf_logits(model, ids)
  cache = qwen3_5.init_cache(config, batch=2, max_len=32)
  mask = np.ones_like(ids)
  logits, cache = _apply(config, params, ids[:, :prompt], mask[:, :prompt], cache)
  got = [logits]
  for t in range(prompt, prompt + steps):
    logits, cache = _apply(config, params, ids[:, t:t + 1], mask[:, t:t + 1], cache)
    got.append(logits)
  np.testing.assert_allclose(np.concatenate(got, axis=1), full, atol=ATOL, rtol=0)
  assert int(cache.index) == 28 and cache.position.tolist() == [28, 28]


def test_padded_batches_equal_unpadded_rows(hf_text):
  _, path = hf_text
  config, params = qwen3_5.load_hf_checkpoint(path)
  lengths = [19, 11, 16]
  width = 24
  rows = [_ids(config, 1, n, seed=10 + i)[0] for i, n in enumerate(lengths)]
  singles = [np.asarray(_forward(config, params, r[None]))[0] for r in rows]
  for side in ("left", "right"):
    ids = np.zeros((3, width), np.int64)
    mask = np.zeros((3, width), np.int64)
    for i, r in enumerate(rows):
      sl = slice(width - len(r), width) if side == "left" else slice(0, len(r))
      ids[i, sl], mask[i, sl] = r, 1
    ids[mask == 0] = 7  # any token: padding must not matter
    out = np.asarray(_forward(config, params, ids, mask))
    for i, r in enumerate(rows):
      sl = slice(width - len(r), width) if side == "left" else slice(0, len(r))
      np.testing.assert_allclose(out[i, sl], singles[i], atol=ATOL, rtol=0, err_msg=side)


def test_padded_prefill_then_decode_continues_each_row(hf_text):
  """Right- and left-padded prefills leave caches from which decoding matches each row alone."""
  model, path = hf_text
  config, params = qwen3_5.load_hf_checkpoint(path)
  lengths, width, steps = [13, 7], 16, 3
  rows = [_ids(config, 1, n + steps, seed=20 + i)[0] for i, n in enumerate(lengths)]
  for side in ("left", "right"):
    ids = np.full((2, width), 5, np.int64)
    mask = np.zeros((2, width), np.int64)
    for i, n in enumerate(lengths):
      sl = slice(width - n, width) if side == "left" else slice(0, n)
      ids[i, sl], mask[i, sl] = rows[i][:n], 1
    cache = qwen3_5.init_cache(config, batch=2, max_len=width + steps)
    _, cache = _apply(config, params, ids, mask, cache)
    for s in range(steps):
      step_ids = np.array([[rows[i][lengths[i] + s]] for i in range(2)])
      logits, cache = _apply(config, params, step_ids, np.ones((2, 1), np.int64), cache)
      for i, n in enumerate(lengths):
        ref = _hf_logits(model, rows[i][None, :n + s + 1])[0, -1]
        np.testing.assert_allclose(logits[i, 0], ref, atol=ATOL, rtol=0, err_msg=f"{side} {s}")


def test_left_padded_logits_match_transformers_with_positions(hf_text):
  """transformers gets the same positions (counted over real tokens) and the same mask."""
  model, path = hf_text
  config, params = qwen3_5.load_hf_checkpoint(path)
  ids = _ids(config, 2, 20, seed=3)
  mask = np.ones_like(ids)
  mask[1, :6] = 0
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  ref = _hf_logits(model, ids, mask, positions)
  out = np.asarray(_forward(config, params, ids, mask))
  np.testing.assert_allclose(out[mask == 1], ref[mask == 1], atol=ATOL, rtol=0)


def test_bfloat16_error_no_worse_than_transformers_bfloat16(hf_text):
  """Rounding differs between frameworks, so bfloat16 is judged against transformers' own
  bfloat16 error on the same random model rather than a fixed tolerance."""
  model, path = hf_text
  config, params = qwen3_5.load_hf_checkpoint(path, dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  ids = _ids(config, 1, 24, seed=4)
  ref = _hf_logits(model, ids)
  hf_bf16 = _hf_logits(copy.deepcopy(model).to(torch.bfloat16), ids).astype(np.float32)
  out = np.asarray(_forward(config, params, ids)).astype(np.float32)
  assert np.abs(out - ref).max() <= 2 * np.abs(hf_bf16 - ref).max() + 1e-2


def test_grouped_attention_matches_dot_product_attention():
  """The decode path's grouped einsum against jax.nn.dot_product_attention (repeated K/V)."""
  rng = np.random.RandomState(0)
  q = jnp.asarray(rng.randn(2, 3, 6, 8), jnp.float32)
  k, v = (jnp.asarray(rng.randn(2, 2, 11, 8), jnp.float32) for _ in range(2))
  mask = jnp.asarray(rng.rand(2, 3, 11) > 0.4).at[:, :, 0].set(True)
  ref = jax.nn.dot_product_attention(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2),
                                     mask=mask[:, None], scale=0.3)
  np.testing.assert_allclose(layers.attend(q, k, v, mask, 0.3), ref, atol=1e-5, rtol=0)
