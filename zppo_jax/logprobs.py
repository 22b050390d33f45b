"""Per-token log-probs and entropy without materialising [B, T, vocab] logits.

The final hidden states are cut into chunks along the sequence; each chunk's logits
[B, chunk, vocab] are computed in float32, reduced to what the loss needs and dropped, and
the chunk is rematerialised in the backward pass. Peak memory for the head is therefore
O(B * chunk * vocab), not O(B * T * vocab): at 248k vocabulary and 8k tokens the full
float32 tensor would be 8 GB per sequence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zppo_jax import models


def _chunk_scores(config, params, h, targets, topk_ids, with_entropy, layout=None):
  """Scores of one chunk: h [B, c, D], targets [B, c] (and topk_ids [B, c, K])."""
  logits = models.of(config).logits_from_hidden(config, params, h).astype(jnp.float32)
  if layout is not None:  # computed where the head's vocab slices lie
    logits = layout.split(logits, logits.ndim - 1)
  lse = jax.nn.logsumexp(logits, axis=-1)
  out = {"logprobs": jnp.take_along_axis(logits, targets[..., None], -1)[..., 0] - lse}
  if topk_ids is not None:
    out["topk_logprobs"] = jnp.take_along_axis(logits, topk_ids, -1) - lse[..., None]
  if with_entropy:  # a diagnostic: no gradient flows through it
    logits = jax.lax.stop_gradient(logits)
    probs = jnp.exp(logits - jax.lax.stop_gradient(lse)[..., None])
    out["entropy"] = jax.lax.stop_gradient(lse) - jnp.sum(probs * logits, axis=-1)
  return out


def token_scores(config, params, tokens, attention_mask=None, *, chunk_size: int = 256,
                 topk_ids=None, with_entropy: bool = True, delta_chunk_size: int = 64,
                 remat: str = "none", vision_tokens=None, positions=None, vision_mask=None,
                 tower_inputs=None, layout=None):
  """Log-probs of each token given the ones before it.

  Args:
    tokens: [B, T] ids; attention_mask: [B, T], 1 on real tokens.
    chunk_size: sequence positions per head chunk (memory ~ B * chunk_size * vocab * 4).
    topk_ids: optional [B, T, K] ids whose log-probs are also wanted (teacher top-k).
    delta_chunk_size, remat, layout: passed to the model (`hidden_states`; layout: the
      family's `Layout`, None: its default).
    vision_tokens: [B, M, D] each row's image / video tokens, the k-th for its k-th
      placeholder (prompts with images; `multimodal.vision_tokens`), with `positions`
      [B, T, 3] the rotary positions and `vision_mask` [B, T] the placeholders they take
      (default: every placeholder id).
    tower_inputs: instead of `vision_tokens`, the tower's inputs per row ("tower_*" fields):
      the tower (params["visual"]) runs here, and is trained through them.
  Returns:
    {"logprobs": [B, T], "entropy": [B, T] (if asked), "topk_logprobs": [B, T, K] (if
    topk_ids)}, entry t scoring token t; position 0 (no context) is 0.
  """
  model = models.of(config)
  if tower_inputs:
    vision_tokens = model.multimodal_tower_tokens(config, params["visual"], tower_inputs)
  embeddings = (None if vision_tokens is None else
                model.multimodal_place(config, params, tokens, vision_tokens, vision_mask))
  h = model.hidden_states(config, params, tokens, attention_mask, chunk_size=delta_chunk_size,
                          remat=remat, embeddings=embeddings,
                          **({} if layout is None else {"layout": layout}),
                          positions=None if positions is None else jnp.moveaxis(positions, -1, 0))
  batch, length = tokens.shape
  n = length - 1
  chunk = max(1, min(chunk_size, n))
  pad = -n % chunk
  # hidden state t predicts token t + 1
  h, targets = h[:, :-1], tokens[:, 1:]
  topk = None if topk_ids is None else topk_ids[:, 1:]

  def split(x):
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape((batch, -1, chunk) + x.shape[2:]), 1, 0)

  if layout is not None:
    # the head split over vocab across the rows' devices, embed whole, once a call: under
    # FSDP's layout XLA gathered it whole for every chunk (56 times a 14336-token row at
    # 2B, 57 GB a chip, and as often again to reduce-scatter its gradient)
    head = model.head_name(config)
    params = {**params, head: layout.split(params[head],
                                           model.logical_axes(config)[head].index("vocab"))}

  @jax.checkpoint
  def body(xs):
    h_c, t_c, k_c = xs
    return _chunk_scores(config, params, h_c, t_c, k_c, with_entropy, layout)

  scores = jax.lax.map(body, (split(h), split(targets), None if topk is None else split(topk)))

  def merge(x):
    x = jnp.moveaxis(x, 0, 1).reshape((batch, n + pad) + x.shape[3:])[:, :n]
    return jnp.pad(x, [(0, 0), (1, 0)] + [(0, 0)] * (x.ndim - 2))

  return {name: merge(x) for name, x in scores.items()}
