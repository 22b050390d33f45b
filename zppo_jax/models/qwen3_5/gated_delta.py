"""The gated delta rule of Gated DeltaNet, in the two forms Qwen3.5 needs.

Per value head, with state S [d_k, d_v], decay g_t <= 0 (log space) and write strength beta_t:

    S_t = exp(g_t) S_{t-1} + k_t beta_t (v_t - exp(g_t) S_{t-1}^T k_t)^T,    o_t = S_t^T q_t

`chunked_gated_delta_rule` evaluates whole sequences chunk by chunk in a `lax.scan`: each
chunk's intra-chunk solve (a unit-lower-triangular inverse, the WY/UT form), then the state
carried past it, so the cost is linear in the length and only one chunk's [C, C] tensors
are live at a time. (Batching every chunk's intra-chunk work at once held them all in
float32: the largest part of the train step, 72.5 GiB of temporaries a chip for the 2B's
128-row chunk on a v5p-64, against 38.6 chunk by chunk; the chunk body is rematerialised
in the backward pass, which keeps only the carried states.)
`recurrent_gated_delta_rule` is the per-token form used for decoding. Both take and return
the same state, so decoding continues from a prefill. q and k are L2-normalised here and q
is scaled by d_k**-0.5, as in transformers (`use_qk_l2norm_in_kernel=True`). A position with
g = 0 and beta = 0 leaves the state untouched: that is how padding is kept out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_HI = jax.lax.Precision.HIGHEST


def _l2norm(x, eps=1e-6):
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def _prepare(q, k, v, g, beta):
  """Repeats key heads to value heads (head i serves value heads i*r .. i*r+r-1), fp32, [B,H,T,.]."""
  rep = v.shape[2] // k.shape[2]
  q, k = jnp.repeat(q, rep, axis=2), jnp.repeat(k, rep, axis=2)
  q, k, v, g, beta = (jnp.swapaxes(x.astype(jnp.float32), 1, 2) for x in (q, k, v, g, beta))
  q = _l2norm(q) * (q.shape[-1] ** -0.5)
  return q, _l2norm(k), v, g, beta


def unit_lower_inverse(lower):
  """(I + lower)^-1 for strictly lower-triangular `lower` [..., C, C], by blocked recursive
  inversion: diagonal blocks of size s are inverted, then pairs of them merged with
      [[A, 0], [C, B]]^-1 = [[A^-1, 0], [-B^-1 C A^-1, B^-1]],
  doubling s up to C. log2(C) rounds of batched matmuls, no sequential loop and no
  triangular-solve custom call (whose CPU kernel can deadlock when several devices share the
  host's thread pool)."""
  size = lower.shape[-1]
  full = 1 << max(size - 1, 0).bit_length()
  lead = lower.shape[:-2]
  if full != size:  # pad to a power of two with identity rows: the inverse keeps its corner
    lower = jnp.pad(lower, [(0, 0)] * len(lead) + [(0, full - size)] * 2)
  inv = jnp.ones(lead + (full, 1, 1), lower.dtype)  # inverses of the 1x1 diagonal blocks
  block = 1
  while block < full:
    count = full // (2 * block)
    # The strictly lower off-diagonal block C of each diagonal block of size 2*block.
    tiles = lower.reshape(lead + (count, 2 * block, count, 2 * block))
    diag = jnp.moveaxis(jnp.diagonal(tiles, axis1=-4, axis2=-2), -1, -3)
    c = diag[..., block:, :block]
    a_inv, b_inv = inv[..., 0::2, :, :], inv[..., 1::2, :, :]
    corner = -jnp.einsum("...ij,...jk,...kl->...il", b_inv, c, a_inv, precision=_HI)
    top = jnp.concatenate([a_inv, jnp.zeros_like(a_inv)], axis=-1)
    inv = jnp.concatenate([top, jnp.concatenate([corner, b_inv], axis=-1)], axis=-2)
    block *= 2
  return inv[..., 0, :size, :size]


def chunked_gated_delta_rule(q, k, v, g, beta, initial_state=None, chunk_size: int = 64):
  """Whole-sequence gated delta rule.

  Args:
    q, k: [B, T, H_k, d_k]; v: [B, T, H_v, d_v] with H_v a multiple of H_k.
    g: [B, T, H_v] log decay (<= 0); beta: [B, T, H_v] in [0, 1].
    initial_state: [B, H_v, d_k, d_v] float32, or None for zeros.
    chunk_size: tokens per chunk; the sequence is padded to a multiple of it.
  Returns:
    (out [B, T, H_v, d_v] in v's dtype, final state [B, H_v, d_k, d_v] float32).
  """
  out_dtype = v.dtype
  batch, length = v.shape[:2]
  q, k, v, g, beta = _prepare(q, k, v, g, beta)
  heads, d_k, d_v = v.shape[1], k.shape[-1], v.shape[-1]
  if initial_state is None:
    initial_state = jnp.zeros((batch, heads, d_k, d_v), jnp.float32)

  pad = -length % chunk_size
  # Padded steps have g = 0 and beta = 0: they neither decay nor write the state.
  q, k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))) for x in (q, k, v))
  g, beta = (jnp.pad(x, ((0, 0), (0, 0), (0, pad))) for x in (g, beta))
  n = (length + pad) // chunk_size
  q, k, v = (x.reshape(batch, heads, n, chunk_size, -1) for x in (q, k, v))
  g, beta = (x.reshape(batch, heads, n, chunk_size) for x in (g, beta))

  causal = jnp.tril(jnp.ones((chunk_size, chunk_size), bool))  # j <= i
  strict = jnp.tril(jnp.ones((chunk_size, chunk_size), bool), -1)

  def step(state, xs):
    """One chunk: its intra-chunk solve, then the state carried past it. Only the chunk's
    own [B, H, C, C] tensors are live (and, under autodiff, only the carried states are kept:
    the body is recomputed chunk by chunk in the backward pass)."""
    q_c, k_c, v_c, g_c, b_c = xs                                 # [B,H,C,.] / [B,H,C]
    cum = jnp.cumsum(g_c, axis=-1)
    diff = cum[..., :, None] - cum[..., None, :]
    decay = jnp.where(causal, jnp.exp(jnp.where(causal, diff, 0.0)), 0.0)  # exp(cum_i - cum_j)
    k_beta = k_c * b_c[..., None]
    # (I + L) [u, w] = [v beta, k beta exp(cum)], L the strictly lower part of (k_beta k^T) * decay.
    lower = jnp.where(strict, jnp.einsum("...id,...jd->...ij", k_beta, k_c, precision=_HI)
                      * decay, 0.0)
    rhs = jnp.concatenate([v_c * b_c[..., None], k_beta * jnp.exp(cum)[..., None]], axis=-1)
    solved = jnp.einsum("...ij,...jd->...id", unit_lower_inverse(lower), rhs, precision=_HI)
    u, w = solved[..., :d_v], solved[..., d_v:]
    intra = jnp.einsum("...id,...jd->...ij", q_c, k_c, precision=_HI) * decay
    v_new = u - jnp.einsum("bhck,bhkv->bhcv", w, state, precision=_HI)
    out = (jnp.einsum("bhck,bhkv->bhcv", q_c * jnp.exp(cum)[..., None], state, precision=_HI)
           + jnp.einsum("bhij,bhjv->bhiv", intra, v_new, precision=_HI))
    k_decayed = k_c * jnp.exp(cum[..., -1:] - cum)[..., None]
    state = (state * jnp.exp(cum[..., -1])[..., None, None]
             + jnp.einsum("bhck,bhcv->bhkv", k_decayed, v_new, precision=_HI))
    return state, out

  xs = tuple(jnp.moveaxis(x, 2, 0) for x in (q, k, v, g, beta))
  state, out = jax.lax.scan(jax.checkpoint(step), initial_state.astype(jnp.float32), xs)
  out = jnp.moveaxis(out, 0, 2).reshape(batch, heads, n * chunk_size, d_v)[:, :, :length]
  return jnp.swapaxes(out, 1, 2).astype(out_dtype), state


def recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=None):
  """Token-by-token gated delta rule (decoding); same arguments and results as the chunked form."""
  out_dtype = v.dtype
  batch = v.shape[0]
  q, k, v, g, beta = _prepare(q, k, v, g, beta)
  if initial_state is None:
    initial_state = jnp.zeros((batch, v.shape[1], k.shape[-1], v.shape[-1]), jnp.float32)

  def step(state, xs):
    q_t, k_t, v_t, g_t, b_t = xs                                # [B,H,d] / [B,H]
    state = state * jnp.exp(g_t)[..., None, None]
    remembered = jnp.einsum("bhkv,bhk->bhv", state, k_t, precision=_HI)
    state = state + k_t[..., :, None] * ((v_t - remembered) * b_t[..., None])[..., None, :]
    return state, jnp.einsum("bhkv,bhk->bhv", state, q_t, precision=_HI)

  xs = tuple(jnp.moveaxis(x, 2, 0) for x in (q, k, v, g, beta))
  state, out = jax.lax.scan(step, initial_state.astype(jnp.float32), xs)
  return jnp.moveaxis(out, 0, 1).astype(out_dtype), state


def causal_conv1d(x, weight, state):
  """Depthwise causal conv over time, continuing from `state` (the previous K-1 inputs).

  Args:
    x: [B, T, C]; weight: [K, C]; state: [B, K-1, C].
  Returns:
    [B, T, C] (no activation), and the padded input [B, K-1+T, C] for state extraction.
  """
  kernel = weight.shape[0]
  length = x.shape[1]
  padded = jnp.concatenate([state.astype(x.dtype), x], axis=1)
  out = sum(padded[:, j:j + length] * weight[j] for j in range(kernel))
  return out, padded
