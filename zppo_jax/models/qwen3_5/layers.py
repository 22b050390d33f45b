"""Qwen3.5 building blocks as pure functions of (params, activations).

Weights are stored [in, out] (transposed from torch's Linear). Norms compute in float32
and cast back, as transformers does, so bfloat16 runs round the same way.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import NamedSharding, PartitionSpec

from zppo_jax.models.qwen3_5 import gated_delta
from zppo_jax.models.qwen3_5.config import Qwen3_5Config


# Queries per block of full attention (see `full_attention`).
QUERY_BLOCK = 512
SPLASH_BLOCK = 128   # the splash kernel's default tile: segments are padded to a multiple


class Layout(NamedTuple):
  """How a segment's layers run on the mesh. `attention`: how full attention attends over
  a segment's own keys (a train row, a scored row): "xla" (`_blocked_attention`), "splash"
  (the Pallas TPU splash kernel: O(T) memory, on TPU) or "splash_interpret" (the same
  kernel in Pallas interpret mode, on any backend: for checking it). With a `mesh`, the
  activations keep their rows split over `batch_axes` (`rows`; left to itself, the
  compiler may instead keep the FSDP-split weights in place and gather every device's
  rows: whole-batch [B, T, mlp] activations on each device), and the kernel runs per
  device on its rows. `feature_axes` (a decode step's layout, over weights laid out by
  `sampler.decode_rules`): the projections' outputs and the output projections' inputs are
  split over their features (`projected`, `to_output`, `inner`), so each device multiplies
  by the weight slice it holds, and only the rows' activations move between devices."""
  attention: str = "xla"
  mesh: object = None
  batch_axes: tuple = ()
  feature_axes: tuple = ()

  def rows(self, x):
    """`x` [B, ...] with its rows split over the batch axes (no-op without a mesh)."""
    if self.mesh is None or not self.batch_axes:
      return x
    return jax.lax.with_sharding_constraint(
        x, NamedSharding(self.mesh, PartitionSpec(self.batch_axes)))

  def _along(self, x, dim: int, axes: tuple):
    """`x` split along `dim` over mesh `axes` and whole along the others (no-op without a
    mesh or axes, or where they do not divide it)."""
    if self.mesh is None or not axes or x.shape[dim] % np.prod([self.mesh.shape[a]
                                                                for a in axes]):
      return x
    spec = [None] * x.ndim
    spec[dim] = axes
    return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, PartitionSpec(*spec)))

  def split(self, x, dim: int):
    """`x` split along `dim` over the batch axes, whole along the others: the output head
    along vocab for the loss's chunks, laid out so once a call instead of gathered whole
    for every chunk."""
    return self._along(x, dim, self.batch_axes)

  def embed(self, table, ids):
    """Token embeddings [B, T, D] of `ids` [B, T] from `table` [V, D]. In a segment's layout
    (a mesh, no feature axes) every device looks up all the rows' tokens in its slice of
    D (the table split along D over the batch axes, as FSDP keeps it) and the result moves
    to the rows' devices (an all-to-all of B x T x D / devices). Left to itself, XLA
    gathered the whole table for the lookup and all-reduced its whole gradient: 3 GB a
    chip a train chunk at 2B on a v5p-64 (248320 x 2048), for 0.2 GB of activations."""
    if self.mesh is None or not self.batch_axes or self.feature_axes:
      return jnp.take(table, ids, axis=0)
    ids = jax.lax.with_sharding_constraint(ids, NamedSharding(self.mesh, PartitionSpec()))
    return self.rows(self.split(jnp.take(self.split(table, 1), ids, axis=0), 2))

  def features(self, x):
    """`x` [..., F] split over its last dim across `feature_axes`."""
    return self._along(x, x.ndim - 1, self.feature_axes)

  def projected(self, x):
    """A projection's output [B, T, F] that the rows' cache reads (attention, the delta
    rule): in a decode step computed split over features, then moved to its rows;
    otherwise as it is."""
    return self.rows(self.features(x)) if self.feature_axes else x

  def to_output(self, x):
    """The input [B, T, F] of an output projection, made on the rows (attention, the delta
    rule): in a decode step kept there, then split over features (left free, the split
    propagates back into the attention, which then gathers the cache's rows); otherwise
    as it is."""
    return self.features(self.rows(x)) if self.feature_axes else x

  def inner(self, x):
    """An MLP's [B, T, mlp] intermediate: split over features in a decode step, over rows
    otherwise."""
    return self.features(x) if self.feature_axes else self.rows(x)


ATTENTION_KINDS = ("xla", "splash", "splash_interpret")


@functools.lru_cache(maxsize=None)
def _splash_kernel(length: int, group: int, interpret: bool):
  """One kernel per shape (its block masks are computed on the host, as concrete arrays
  even when first asked inside a trace: the cache outlives it)."""
  mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((length, length))] * group)
  with jax.ensure_compile_time_eval():
    return splash.make_splash_mqa_single_device(mask, interpret=interpret)


def splash_attention(q, k, v, valid, layout: Layout):
  """Causal grouped-query attention of a segment over its own keys through the splash
  kernel: q [B, T, H, hd], k, v [B, H_kv, T, hd], valid [B, T] (padding gets segment 0,
  so it attends to padding only and real tokens never see it). Each kv head's query
  group is one MQA call; T is padded to a multiple of SPLASH_BLOCK. Returns [B, T, H, hd]."""
  def local(q, k, v, valid):
    batch, length, heads, hd = q.shape
    kv_heads = k.shape[1]
    pad = -length % SPLASH_BLOCK
    q = jnp.pad(q * hd ** -0.5, ((0, 0), (0, pad), (0, 0), (0, 0)))
    k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))) for x in (k, v))
    segments = jnp.pad(valid.astype(jnp.int32), ((0, 0), (0, pad)))
    q_groups = jnp.moveaxis(q.reshape(batch, length + pad, kv_heads, heads // kv_heads, hd),
                            1, 3)                                    # [B, H_kv, g, T, hd]
    kernel = _splash_kernel(length + pad, heads // kv_heads,
                            layout.attention == "splash_interpret")
    per_kv_head = jax.vmap(lambda q_, k_, v_, s: kernel(
        q_, k_, v_, segment_ids=splash.SegmentIds(q=s, kv=s)), in_axes=(0, 0, 0, None))
    out = jax.vmap(per_kv_head)(q_groups, k, v, segments)           # [B, H_kv, g, T, hd]
    return jnp.moveaxis(out, 3, 1).reshape(batch, length + pad, heads, hd)[:, :length]

  if layout.mesh is None or not layout.batch_axes:
    return local(q, k, v, valid)
  rows = PartitionSpec(layout.batch_axes)
  return jax.shard_map(local, mesh=layout.mesh, in_specs=(rows,) * 4, out_specs=rows,
                       check_vma=False)(q, k, v, valid)


def rms_norm(x, weight, eps):
  """Qwen3.5's zero-centred RMSNorm: weight is stored as an offset from 1."""
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (x32 * (1.0 + weight.astype(jnp.float32))).astype(x.dtype)


def gated_rms_norm(x, gate, weight, eps):
  """RMSNorm (plain weight) then a SiLU gate: the output norm of Gated DeltaNet."""
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  x = weight * x32.astype(x.dtype)
  return (x.astype(jnp.float32) * jax.nn.silu(gate.astype(jnp.float32))).astype(x.dtype)


def dense(x, w):
  """x [..., in] @ w [in, out], as one 2-D matmul: the weight gradient then contracts a
  single flattened row dim, which XLA's CPU backend runs ~5x faster than a contraction
  over [B, T] (accelerators see the same program either way)."""
  return (x.reshape(-1, x.shape[-1]) @ w).reshape(x.shape[:-1] + w.shape[1:])


def mlp(p, x, inner=lambda x: x):
  """SwiGLU; `inner` places the [B, T, mlp] intermediate (`Layout.inner`)."""
  return dense(inner(jax.nn.silu(dense(x, p["gate_proj"])) * dense(x, p["up_proj"])),
               p["down_proj"])


def rope(positions, config: Qwen3_5Config, dtype):
  """cos, sin [B, T, rotary_dim] for integer positions [B, T] (text only: the three M-RoPE
  sections share one position, so M-RoPE reduces to plain RoPE on the rotary dims), or
  [3, B, T] (time, height, width: images and video), whose frequencies interleave as
  `config.mrope_section` says (`mrope_axes`)."""
  dim = config.rotary_dim
  inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq
  if positions.ndim == 3:  # [3, B, T, F] -> [B, T, F]: frequency j follows axis mrope_axes[j]
    axes_F = jnp.asarray(mrope_axes(config))
    freqs = jnp.take_along_axis(jnp.moveaxis(freqs, 0, -1), axes_F[None, None, :, None],
                                axis=-1)[..., 0]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def mrope_axes(config: Qwen3_5Config) -> np.ndarray:
  """[rotary_dim / 2] int: which position (0 time, 1 height, 2 width) each rotary frequency
  turns with: height every third from 1 and width every third from 2, for the first
  3 * mrope_section[1 or 2] frequencies; time for the rest."""
  axes = np.zeros(config.rotary_dim // 2, np.int32)
  for axis in (1, 2):
    axes[axis:3 * config.mrope_section[axis]:3] = axis
  return axes


def _apply_rope(x, cos, sin):
  """Rotates the first rotary_dim features of x [B, T, H, D] (rotate-half convention)."""
  dim = cos.shape[-1]
  rot, rest = x[..., :dim], x[..., dim:]
  half = dim // 2
  rotated = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
  rot = rot * cos[:, :, None] + rotated * sin[:, :, None]
  return jnp.concatenate([rot, rest], axis=-1)


def _linear(x, p, name):
  y = dense(x, p[name])
  bias = p.get(name + "_bias")
  return y if bias is None else y + bias


def attend(q, k, v, mask, scale, own=None):
  """Grouped-query softmax attention without repeating K/V (query head i reads kv head
  i // (H / H_kv), as transformers' repeat_kv). Scores and softmax in float32. Used for
  decode steps; segments of several queries go through `jax.nn.dot_product_attention`,
  whose fused kernels are faster there (1.3x at T = 4096 on CPU).

  q: [B, T, H, hd]; k, v: [B, H_kv, S, hd] (slots next to head_dim, so a decode step's dots
  need no transpose); mask: [B, T, S] bool, True where a query may see a slot.
  own: None, or a decode step's own key and value [B, H_kv, 1, hd] (T = 1), seen besides
  the slots: the cache is then only read, never read after this step's write, which would
  make XLA copy it whole on every step. Every query must see at least one key.
  Returns [B, T, H, hd].
  """
  batch, length, heads, hd = q.shape
  kv_heads = k.shape[1]
  q = q.reshape(batch, length, kv_heads, heads // kv_heads, hd)
  scores = jnp.einsum("btkgd,bksd->bkgts", q, k, preferred_element_type=jnp.float32) * scale
  scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
  if own is None:
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bksd->btkgd", probs, v).reshape(batch, length, heads, hd)
  own_k, own_v = own
  own_score = jnp.einsum("btkgd,bksd->bkgts", q, own_k,
                         preferred_element_type=jnp.float32) * scale     # [B, H_kv, g, 1, 1]
  top = jnp.maximum(jnp.max(scores, axis=-1, keepdims=True), own_score)
  probs, own_prob = jnp.exp(scores - top), jnp.exp(own_score - top)
  total = jnp.sum(probs, axis=-1, keepdims=True) + own_prob
  out = (jnp.einsum("bkgts,bksd->bkgtd", probs.astype(v.dtype), v,
                    preferred_element_type=jnp.float32)
         + own_prob * own_v[:, :, None].astype(jnp.float32)) / total
  return jnp.moveaxis(out, 3, 1).astype(v.dtype).reshape(batch, length, heads, hd)


def full_attention(p, x, cos, sin, config: Qwen3_5Config, *, kv_cache, kv_mask,
                   query_block: int = QUERY_BLOCK, layout: Layout = Layout(), valid=None):
  """Gated softmax attention with q/k RMSNorm, GQA and partial RoPE.

  Args:
    p: one layer's attention params.
    x: [B, T, D] normed hidden states.
    cos, sin: [B, T, rotary_dim].
    kv_cache: None (keys are this segment's) or (keys, values, index): this layer's
      [B, H_kv, S, hd] cache, only read (the caller writes the segment's keys into it, so
      that a decode step never copies it), and the slot where this segment starts.
    kv_mask: [B, T, S] boolean, which key slots each query may see (padding and causality).
    query_block: queries per block; the score tensor is [B, H, query_block, S] at most.
    layout, valid: a segment without a cache attends as `layout.attention` says
      (`Layout`), with `valid` [B, T] its real tokens.
  Returns:
    ([B, T, D], (k, v) [B, H_kv, T, hd]: this segment's keys and values, to store).
  """
  batch, length, _ = x.shape
  hd, heads, kv_heads = config.head_dim, config.num_attention_heads, config.num_key_value_heads
  project = lambda name: layout.projected(_linear(x, p, name))
  q_and_gate = project("q_proj").reshape(batch, length, heads, 2 * hd)
  q, gate = q_and_gate[..., :hd], q_and_gate[..., hd:].reshape(batch, length, heads * hd)
  q = rms_norm(q, p["q_norm"], config.rms_norm_eps)
  k = rms_norm(project("k_proj").reshape(batch, length, kv_heads, hd), p["k_norm"],
               config.rms_norm_eps)
  v = project("v_proj").reshape(batch, length, kv_heads, hd)
  q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
  k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
  if layout.attention not in ATTENTION_KINDS:
    raise ValueError(f"config.train.attention={layout.attention!r}: must be one of "
                     f"{ATTENTION_KINDS}")
  if kv_cache is None and layout.attention != "xla":
    out = splash_attention(q, k, v, valid, layout)
  elif kv_cache is None:
    out = _blocked_attention(q, k, v, kv_mask, query_block, causal=True)
  else:
    keys, values, index = kv_cache
    if length == 1:  # a decode step: the cache's slots, then its own key
      old_mask = kv_mask & (jnp.arange(keys.shape[2]) != index)[None, None]
      out = attend(q, keys.astype(q.dtype), values.astype(q.dtype), old_mask, hd ** -0.5,
                   own=(k.astype(q.dtype), v.astype(q.dtype)))
    else:  # several tokens attend over a copy of the cache holding their own keys
      k_all = jax.lax.dynamic_update_slice(keys, k.astype(keys.dtype), (0, 0, index, 0))
      v_all = jax.lax.dynamic_update_slice(values, v.astype(values.dtype), (0, 0, index, 0))
      out = _blocked_attention(q, k_all, v_all, kv_mask, query_block, causal=False)
  out = out.reshape(batch, length, heads * hd) * jax.nn.sigmoid(gate)
  return _linear(layout.to_output(out), p, "o_proj"), (k, v)


def _blocked_attention(q, k, v, mask, query_block: int, causal: bool):
  """Attention of q [B, T, H, hd] over k, v [B, H_kv, S, hd] in blocks of queries, which
  bound the score tensor to [B, H, query_block, S]; with `causal` (the keys are the
  segment's own, slot t holding query t's key) a block reads only the keys up to its end."""
  length, hd = q.shape[1], q.shape[-1]
  k, v = k.astype(q.dtype), v.astype(q.dtype)
  outs = []
  for start in range(0, length, query_block):
    end = min(start + query_block, length)
    keys_end = end if causal else k.shape[2]
    q_blk, k_blk, v_blk = q[:, start:end], k[:, :, :keys_end], v[:, :, :keys_end]
    mask_blk = mask[:, start:end, :keys_end]
    if length == 1:
      outs.append(attend(q_blk, k_blk, v_blk, mask_blk, hd ** -0.5))
    else:
      outs.append(jax.nn.dot_product_attention(
          q_blk, jnp.swapaxes(k_blk, 1, 2), jnp.swapaxes(v_blk, 1, 2), mask=mask_blk[:, None],
          scale=hd ** -0.5))
  return jnp.concatenate(outs, axis=1)


def gated_deltanet(p, x, mask, config: Qwen3_5Config, *, conv_state, recurrent_state,
                   chunk_size: int, layout: Layout = Layout()):
  """Gated DeltaNet token mixer.

  Args:
    p: one layer's linear-attention params.
    x: [B, T, D] normed hidden states; mask: [B, T] bool, False at padding.
    conv_state: [B, K-1, conv_dim], the inputs before this segment (zeros for a fresh one).
    recurrent_state: [B, H_v, d_k, d_v] float32 or None (zeros).
    chunk_size: chunk length of the parallel form (used when T > 1).
    layout: where the projections run (`Layout.features`; the rule runs on rows).
  Returns:
    ([B, T, D], new conv_state, new recurrent_state). The new conv state holds the K-1
    inputs before the end of the last real token, so right padding does not enter it.
  """
  batch, length, _ = x.shape
  x = jnp.where(mask[..., None], x, 0)
  project = lambda name: layout.projected(dense(x, p[name]))
  mixed, padded = gated_delta.causal_conv1d(project("in_proj_qkv"), p["conv1d"], conv_state)
  mixed = jax.nn.silu(mixed)
  kd, hk, hv = config.linear_key_dim, config.linear_key_head_dim, config.linear_value_head_dim
  q = mixed[..., :kd].reshape(batch, length, -1, hk)
  k = mixed[..., kd:2 * kd].reshape(batch, length, -1, hk)
  v = mixed[..., 2 * kd:].reshape(batch, length, -1, hv)
  beta = jax.nn.sigmoid((dense(x, p["in_proj_b"])).astype(jnp.float32))
  g = -jnp.exp(p["A_log"].astype(jnp.float32)) * jax.nn.softplus(
      (dense(x, p["in_proj_a"])).astype(jnp.float32) + p["dt_bias"].astype(jnp.float32))
  beta = jnp.where(mask[..., None], beta, 0.0)
  g = jnp.where(mask[..., None], g, 0.0)
  if length == 1:
    core, state = gated_delta.recurrent_gated_delta_rule(q, k, v, g, beta, recurrent_state)
  else:
    core, state = gated_delta.chunked_gated_delta_rule(
        q, k, v, g, beta, recurrent_state, chunk_size=chunk_size)
  z = project("in_proj_z").reshape(batch, length, -1, hv)
  core = gated_rms_norm(core, z, p["norm"], config.rms_norm_eps)
  out = dense(layout.to_output(core.reshape(batch, length, -1)), p["out_proj"])

  # End of the last real token (0 when none: the old state is kept).
  ends = jnp.max(jnp.where(mask, jnp.arange(1, length + 1), 0), axis=1)
  window = conv_state.shape[1]
  # Token t sits at row K-1+t of `padded`, so the K-1 inputs ending at token end-1 start at row end.
  take = ends[:, None] + jnp.arange(window)[None, :]
  new_conv = jnp.take_along_axis(padded, take[..., None], axis=1).astype(conv_state.dtype)
  return out, new_conv, state
