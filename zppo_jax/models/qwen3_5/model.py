"""Qwen3.5 causal LM forward pass over an explicit cache.

`forward` is the whole-sequence pass (training, scoring). `apply` runs a segment against a
`Cache` and returns the updated cache: a prefill is `apply` on the prompt, a decode step is
`apply` on one token per row. Both go through `hidden_states`, which scans over blocks of
the repeating `layer_types` pattern (for the official models, 3 Gated DeltaNet layers then 1
full-attention layer), so compile time does not grow with depth.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from zppo_jax.models.qwen3_5 import layers, multimodal
from zppo_jax.models.qwen3_5.config import Qwen3_5Config
from zppo_jax.models.qwen3_5.params import FULL, LINEAR


@struct.dataclass
class Cache:
  """Decoding state for a batch.

  conv:      [L_linear, B, K-1, conv_dim]   last inputs of each Gated DeltaNet conv
  recurrent: [L_linear, B, H_v, d_k, d_v]   delta-rule state, float32
  keys, values: [L_full, B, H_kv, S, head_dim]   KV cache of the full-attention layers
  valid:     [B, S] bool    which slots hold a real (non-padding) token
  index:     [] int32       the next slot to write; every row writes the same slot
  position:  [B] int32      RoPE position of each row's next real token

  Memory: 2 * L_full * B * S * H_kv * head_dim * itemsize (KV)
        + L_linear * B * ((K-1) * conv_dim * itemsize + H_v * d_k * d_v * 4) bytes.
  A segment must fit: index + T <= S (the caller sizes S; slots past S are not written).
  """
  conv: jax.Array
  recurrent: jax.Array
  keys: jax.Array
  values: jax.Array
  valid: jax.Array
  index: jax.Array
  position: jax.Array


def init_cache(config: Qwen3_5Config, batch: int, max_len: int, dtype=jnp.float32) -> Cache:
  c = config
  return Cache(
      conv=jnp.zeros((c.num_linear_layers, batch, c.linear_conv_kernel_dim - 1,
                      c.linear_conv_dim), dtype),
      recurrent=jnp.zeros((c.num_linear_layers, batch, c.linear_num_value_heads,
                           c.linear_key_head_dim, c.linear_value_head_dim), jnp.float32),
      keys=jnp.zeros((c.num_full_layers, batch, c.num_key_value_heads, max_len, c.head_dim),
                     dtype),
      values=jnp.zeros((c.num_full_layers, batch, c.num_key_value_heads, max_len, c.head_dim),
                       dtype),
      valid=jnp.zeros((batch, max_len), bool),
      index=jnp.zeros((), jnp.int32),
      position=jnp.zeros((batch,), jnp.int32),
  )


# Logical axis names of each `Cache` field, to shard it like the params: rows over the batch
# axes, heads over the tensor axis, slots and state dims whole.
CACHE_LOGICAL_AXES = Cache(
    conv=("layers", "batch", None, "linear_qkv"),
    recurrent=("layers", "batch", "linear_heads", None, None),
    keys=("layers", "batch", "kv_heads", None, "head_dim"),
    values=("layers", "batch", "kv_heads", None, "head_dim"),
    valid=("batch", None), index=(), position=("batch",))


def _period(layer_types: tuple[str, ...]) -> int:
  n = len(layer_types)
  return next(p for p in range(1, n + 1)
              if n % p == 0 and layer_types == layer_types[:p] * (n // p))


def _blocks(tree, num_blocks):
  """[n, ...] stacks -> [num_blocks, n / num_blocks, ...]."""
  return jax.tree.map(
      lambda x: x.reshape((num_blocks, x.shape[0] // num_blocks) + x.shape[1:]), tree)


def _after_reads(value, h, batch_axis: int):
  """`value` (a cache write) made to depend on `h` [B, T, D], which needed every read of
  the old cache: without the order XLA copies the whole buffer to keep the reads' version (an
  optimization barrier does not survive XLA's CPU pipeline). It adds 0 to each row, or NaN
  to a row whose hidden state already is NaN."""
  shape = [1] * value.ndim
  shape[batch_axis] = h.shape[0]
  return value + (0.0 * h[:, -1, 0]).reshape(shape).astype(value.dtype)


# Rematerialisation of each layer block in the backward pass, by name: what it keeps.
REMAT_POLICIES = {
    "none": None,                                                     # keep all activations
    "full": jax.checkpoint_policies.nothing_saveable,                 # keep only block inputs
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}


def hidden_states(config: Qwen3_5Config, params, input_ids, attention_mask=None, cache=None, *,
                  chunk_size: int = 64, remat: str = "none", embeddings=None, positions=None,
                  layout: layers.Layout = layers.Layout()):
  """Final-norm hidden states [B, T, D] (and the new cache when one is given).

  Args:
    input_ids: [B, T] int token ids.
    attention_mask: [B, T], 1 for real tokens, 0 for padding (left or right). Positions
      count real tokens only, so a padded row gets the same result as the unpadded one.
    cache: a `Cache` to continue from, or None for a fresh sequence with no cache kept.
    chunk_size: chunk length of the chunked delta rule.
    remat: a `REMAT_POLICIES` name: what each layer block keeps for the backward pass.
    embeddings: [B, T, D] input embeddings instead of the tokens' (images and video placed
      in them: `multimodal.embed`).
    positions: [3, B, T] multimodal rotary positions (`multimodal.positions`) instead of
      the text positions; a cache then continues after the largest.
    layout: how the layers run on the mesh (`layers.Layout`: rows kept split over the
      batch axes; full attention without a cache by XLA's blocked softmax or the Pallas
      splash kernel).
  """
  c = config
  batch, length = input_ids.shape
  mask = (jnp.ones((batch, length), bool) if attention_mask is None
          else attention_mask.astype(bool))
  dtype = params["embed"].dtype
  h = (layout.embed(params["embed"], input_ids) if embeddings is None
       else layout.rows(embeddings))

  start = jnp.zeros((batch,), jnp.int32) if cache is None else cache.position
  if positions is None:
    positions = start[:, None] + jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    next_position = start + jnp.sum(mask, axis=1, dtype=jnp.int32)
  else:
    positions = start[None, :, None] + positions
    next_position = jnp.max(jnp.where(mask, positions.max(axis=0), start[:, None] - 1),
                            axis=1).astype(jnp.int32) + 1
  cos, sin = layers.rope(positions, c, dtype)
  if cache is None:
    slots = jnp.arange(length)
    key_slots, valid = slots, mask
  else:
    slots = cache.index + jnp.arange(length)
    key_slots = jnp.arange(cache.valid.shape[1])
    valid = jax.lax.dynamic_update_slice(cache.valid, mask, (0, cache.index))
  # Causal over slots, padding keys hidden; every query sees at least itself (no empty rows).
  kv_mask = ((valid[:, None, :] & (key_slots[None, None, :] <= slots[None, :, None]))
             | (key_slots[None, None, :] == slots[None, :, None]))

  period = _period(c.layer_types)
  pattern = c.layer_types[:period]
  num_blocks = c.num_hidden_layers // period
  per_block = {LINEAR: pattern.count(LINEAR), FULL: pattern.count(FULL)}
  conv0 = jnp.zeros((batch, c.linear_conv_kernel_dim - 1, c.linear_conv_dim), dtype)
  # The conv and delta-rule state stacks ride in the scan's carry and are updated in place
  # (as scan inputs and outputs they were a second copy of the states, a cache-sized
  # temporary of every decode step on TPU): each layer writes its delta-rule slot after its
  # reads, and a block its layers' conv slots at once (written per layer, XLA copied the
  # conv stack whole on every layer; stacked per block, the delta-rule states took a
  # block-sized temporary on TPU). Both writes follow the reads (`_after_reads`). The KV
  # stacks are read in place and each block returns only the segment's own keys and values,
  # which one update writes into the stacks after the scan: a layer that wrote its slots
  # inside the scan and read them back would make XLA copy the whole KV cache every step.
  states = None if cache is None else {"conv": cache.conv, "recurrent": cache.recurrent}

  def block(carry, xs):
    h, states = carry
    p_lin, p_full, b = xs
    i_lin = i_full = 0
    new = {"keys": [], "values": [], "conv": []}
    first = b * per_block[LINEAR]
    convs = None if states is None or not per_block[LINEAR] else (
        jax.lax.dynamic_slice_in_dim(states["conv"], first, per_block[LINEAR]))
    for layer_type in pattern:
      if layer_type == LINEAR:
        p = jax.tree.map(lambda x: x[i_lin], p_lin)
        x = layers.rms_norm(h, p["input_norm"], c.rms_norm_eps)
        conv, rec = (conv0, None) if states is None else (
            convs[i_lin],
            jax.lax.dynamic_index_in_dim(states["recurrent"], first + i_lin, keepdims=False))
        x, conv, rec = layers.gated_deltanet(p, x, mask, c, conv_state=conv,
                                             recurrent_state=rec, chunk_size=chunk_size,
                                             layout=layout)
        if states is not None:
          new["conv"].append(conv)
          states = dict(states, recurrent=jax.lax.dynamic_update_index_in_dim(
              states["recurrent"], _after_reads(rec, x, 0), first + i_lin, 0))
        i_lin += 1
      else:
        p = jax.tree.map(lambda x: x[i_full], p_full)
        x = layers.rms_norm(h, p["input_norm"], c.rms_norm_eps)
        j = b * per_block[FULL] + i_full
        kv = None if cache is None else (  # read in place: the KV stacks are not scanned over
            jax.lax.dynamic_index_in_dim(cache.keys, j, keepdims=False),
            jax.lax.dynamic_index_in_dim(cache.values, j, keepdims=False), cache.index)
        x, (k, v) = layers.full_attention(p, x, cos, sin, c, kv_cache=kv, kv_mask=kv_mask,
                                          layout=layout, valid=mask)
        new["keys"].append(k)
        new["values"].append(v)
        i_full += 1
      h = layout.rows(h + x)
      h = layout.rows(h + layers.mlp(p["mlp"], layers.rms_norm(h, p["post_norm"],
                                                                c.rms_norm_eps), layout.inner))
    if cache is None:
      return (h, states), None
    if new["conv"]:  # one write of the block's conv slots, after every read of them
      states = dict(states, conv=jax.lax.dynamic_update_slice_in_dim(
          states["conv"], _after_reads(jnp.stack(new["conv"]).astype(states["conv"].dtype),
                                       h, 1), first, 0))
    return (h, states), {name: jnp.stack(new[name]).astype(getattr(cache, name).dtype)
                         for name in ("keys", "values") if new[name]}

  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat must be one of {sorted(REMAT_POLICIES)}, got {remat!r}")
  if REMAT_POLICIES[remat] is not None:
    block = jax.checkpoint(block, policy=REMAT_POLICIES[remat])
  xs = (_blocks(params["linear"], num_blocks), _blocks(params["full"], num_blocks),
        jnp.arange(num_blocks))
  (h, states), written = jax.lax.scan(block, (h, states), xs)
  h = layers.rms_norm(h, params["final_norm"], c.rms_norm_eps)
  if cache is None:
    return h
  written = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), written)  # [L, ...]
  # The writes follow every read of the old slots (`_after_reads`).
  def store(name, stack):  # a model without layers of a kind keeps its empty stacks
    if name not in written:
      return stack
    segment = _after_reads(written[name].astype(stack.dtype), h, 1)
    return jax.lax.dynamic_update_slice(stack, segment, (0, 0, 0, cache.index, 0))

  new_cache = Cache(
      conv=states["conv"], recurrent=states["recurrent"],
      keys=store("keys", cache.keys), values=store("values", cache.values),
      valid=valid, index=cache.index + length, position=next_position)
  return h, new_cache


def head_name(config: Qwen3_5Config) -> str:
  """The params entry the output head reads: lm_head, or the tied embedding."""
  return "embed" if config.tie_word_embeddings else "lm_head"


def logits_from_hidden(config: Qwen3_5Config, params, h):
  """[..., D] -> [..., vocab] through lm_head (or the tied embedding)."""
  if config.tie_word_embeddings:
    return layers.dense(h, params["embed"].T)
  return layers.dense(h, params["lm_head"])


def forward(config: Qwen3_5Config, params, input_ids, attention_mask=None, *,
            pixel_values=None, image_grid_thw=None, pixel_values_videos=None,
            video_grid_thw=None, chunk_size: int = 64, remat: str = "none"):
  """Logits [B, T, vocab] for whole sequences (no cache). With images or videos (packed
  patches and their (t, h, w) grids, as the processor gives them; placeholder tokens in
  `input_ids` mark where their tokens go), the vision tower's tokens replace the
  placeholders and the rotary positions are multimodal (`multimodal.py`)."""
  embeddings = positions = None
  if pixel_values is not None or pixel_values_videos is not None:
    embeddings = multimodal.embed(config, params, input_ids, pixel_values, image_grid_thw,
                                  pixel_values_videos, video_grid_thw)
    positions = jnp.asarray(multimodal.positions(config, input_ids, attention_mask,
                                                 image_grid_thw, video_grid_thw))
  h = hidden_states(config, params, input_ids, attention_mask, chunk_size=chunk_size,
                    remat=remat, embeddings=embeddings, positions=positions)
  return logits_from_hidden(config, params, h)


def apply(config: Qwen3_5Config, params, input_ids, attention_mask, cache: Cache, *,
          chunk_size: int = 64, layout: layers.Layout = layers.Layout()):
  """Runs a segment [B, T] against `cache`: returns (logits [B, T, vocab], new cache).

  T > 1 uses the chunked delta rule (prefill), T == 1 the recurrent step (decode). Left
  padding belongs in the first segment of a fresh cache; later segments pad on the right.
  `layout`: how the layers run on the mesh (`layers.Layout`).
  """
  h, cache = hidden_states(config, params, input_ids, attention_mask, cache,
                           chunk_size=chunk_size, layout=layout)
  return logits_from_hidden(config, params, h), cache
