"""The two forms of the gated delta rule agree with each other and with transformers'."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.qwen3_5 import modeling_qwen3_5 as hf

from zppo_jax.models.qwen3_5 import gated_delta


def _inputs(seed, batch=2, length=37, hk=2, hv=4, dk=8, dv=6):
  rng = np.random.RandomState(seed)
  q = rng.randn(batch, length, hk, dk).astype(np.float32)
  k = rng.randn(batch, length, hk, dk).astype(np.float32)
  v = rng.randn(batch, length, hv, dv).astype(np.float32)
  g = -np.abs(rng.randn(batch, length, hv)).astype(np.float32)
  beta = 1 / (1 + np.exp(-rng.randn(batch, length, hv))).astype(np.float32)
  state = rng.randn(batch, hv, dk, dv).astype(np.float32)
  return q, k, v, g, beta, state


@pytest.mark.parametrize("chunk_size", [4, 16, 64])
def test_chunked_matches_transformers_recurrent(chunk_size):
  q, k, v, g, beta, state = _inputs(0)
  ref_out, ref_state = hf.torch_recurrent_gated_delta_rule(
      *map(torch.from_numpy, (q, k, v, g, beta)), initial_state=torch.from_numpy(state),
      output_final_state=True, use_qk_l2norm_in_kernel=True)
  out, new_state = gated_delta.chunked_gated_delta_rule(q, k, v, g, beta, state,
                                                        chunk_size=chunk_size)
  np.testing.assert_allclose(out, ref_out.numpy(), atol=2e-5, rtol=1e-4)
  np.testing.assert_allclose(new_state, ref_state.numpy(), atol=2e-5, rtol=1e-4)


def test_recurrent_matches_chunked_and_continues_it():
  q, k, v, g, beta, state = _inputs(1)
  full_out, full_state = gated_delta.chunked_gated_delta_rule(q, k, v, g, beta, state,
                                                              chunk_size=8)
  # First 30 tokens chunked, the last 7 one at a time from the chunked state.
  head_out, mid = gated_delta.chunked_gated_delta_rule(
      *(x[:, :30] for x in (q, k, v, g, beta)), state, chunk_size=8)
  tail = []
  for t in range(30, 37):
    o, mid = gated_delta.recurrent_gated_delta_rule(
        *(x[:, t:t + 1] for x in (q, k, v, g, beta)), mid)
    tail.append(o)
  np.testing.assert_allclose(np.concatenate([head_out] + tail, axis=1), full_out, atol=2e-5)
  np.testing.assert_allclose(mid, full_state, atol=2e-5)


def test_zero_gate_and_beta_leave_state_untouched():
  q, k, v, g, beta, state = _inputs(2, length=5)
  g[:] = 0.0
  beta[:] = 0.0
  _, new_state = gated_delta.chunked_gated_delta_rule(q, k, v, g, beta, state, chunk_size=4)
  np.testing.assert_allclose(new_state, state, atol=1e-6)


@pytest.mark.parametrize("size", [1, 7, 16, 64])
def test_unit_lower_inverse(size):
  """Blocked inversion of I + strictly-lower, also for sizes that are not powers of two."""
  lower = np.tril(np.random.RandomState(size).randn(3, 2, size, size) * 0.5, -1)
  inv = gated_delta.unit_lower_inverse(jnp.asarray(lower, jnp.float32))
  ref = np.linalg.inv(np.eye(size) + lower)
  np.testing.assert_allclose(inv, ref, atol=1e-5 * np.abs(ref).max(), rtol=0)
