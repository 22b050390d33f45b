"""Per-device bytes of the activations a Qwen3.5 program holds beside its arguments and
outputs: the train step's gradient program and a sampler's prefill, for `rows` rows of
`length` tokens on one device (the rows already split over the batch axes).

A hand count, in the manner of `zppo_jax.memory`: the tensors live at the program's peak,
by kind, as XLA's TPU buffer assignment of the 2B lists them (`python -m zppo_jax.aot` with
`XLA_FLAGS=--xla_dump_to=DIR`, `DIR/*live-range.txt` and `*memory-usage-report.txt`).
benchmarks/RESULTS.md compares the counts with XLA's figures for every size.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from zppo_jax.models.qwen3_5.config import Qwen3_5Config
from zppo_jax.models.qwen3_5.model import _period
from zppo_jax.models.qwen3_5.params import LINEAR


def _layers(config: Qwen3_5Config) -> tuple[int, int, int]:
  """(layers in a block of the repeating pattern, Gated DeltaNet layers in it, blocks)."""
  period = _period(config.layer_types)
  return period, config.layer_types[:period].count(LINEAR), config.num_hidden_layers // period


def _delta_states(config: Qwen3_5Config, rows: int, length: int, chunk: int) -> int:
  """A Gated DeltaNet layer's float32 states at the start of each chunk of the rule, which
  its chunk-by-chunk scan keeps for the backward pass: [T / C, rows, H_v, d_k, d_v]."""
  return (rows * math.ceil(length / chunk) * config.linear_num_value_heads
          * config.linear_key_head_dim * config.linear_value_head_dim * 4)


def train_step(config: Qwen3_5Config, rows: int, length: int, *, compute_dtype, remat: str,
               delta_chunk: int, logprob_chunk: int) -> int:
  """The gradient program's activations. With `remat="full"` each block's input is kept
  (compute dtype) and one block at a time is recomputed for its backward pass. What that
  holds, a token, as the 0.8B's and 2B's buffer lists give it for a block of 3 Gated
  DeltaNet layers and 1 attention layer: 3.5 [intermediate] MLP tensors a layer (gate, up,
  their product, gradients), 5.25 [hidden] ones a layer (normed inputs, residual
  gradients), and a Gated DeltaNet layer 7/3 [conv_dim] ones (its q, k, v projection and
  convolution), 19/3 float32 and 14/3 compute-dtype [H_v * d_v] ones (the chunked rule's
  tensors), and its float32 states at the start of each chunk. The head's loop holds
  instead the final hidden states' float32 gradient and three float32 [chunk, vocab] logit
  tensors a row (logits, softmax, gradient); the larger of the two is the peak. Without
  remat ("none", and "dots" counted as it: an upper bound) every block's working set is
  kept."""
  c = jnp.dtype(compute_dtype).itemsize
  d, f = config.hidden_size, config.intermediate_size
  period, linear, blocks = _layers(config)
  tokens = rows * length
  per_token = (period * (3.5 * f + 5.25 * d) * c
               + linear * (7 / 3 * config.linear_conv_dim * c
                           + config.linear_value_dim * (19 / 3 * 4 + 14 / 3 * c)))
  block = int(tokens * per_token) + linear * _delta_states(config, rows, length, delta_chunk)
  head = tokens * d * 4 + 3 * rows * logprob_chunk * config.vocab_size * 4
  if remat == "full":
    return blocks * tokens * d * c + max(block, head)
  return blocks * block + head


def prefill(config: Qwen3_5Config, rows: int, length: int, dtype) -> int:
  """A prefill's working set beside the cache it writes: one layer's forward at a time,
  three [T, intermediate] MLP tensors (gate, up, their product), four float32
  [T, H_v * d_v] tensors of the chunked delta rule and three [T, hidden] ones."""
  c = jnp.dtype(dtype).itemsize
  return rows * length * (3 * config.intermediate_size * c + 4 * config.linear_value_dim * 4
                          + 3 * config.hidden_size * c)
