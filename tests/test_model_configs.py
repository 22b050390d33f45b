"""The real Qwen3.5 shapes of models/qwen3_5/presets.py build, and count as many parameters as
transformers' own model of the same config.json."""


import jax
import pytest
import torch
import transformers

from zppo_jax.models import qwen3_5
from zppo_jax.models.qwen3_5 import presets as sizes

# Text-model parameters (without vision tower and MTP head), as published model sizes round.
APPROX_BILLIONS = {"0.8b": 0.75, "2b": 1.9, "4b": 4.2, "9b": 9.0, "27b": 26.9}


@pytest.mark.parametrize("size", sorted(sizes.SIZES))
def test_real_config_builds_and_counts_like_transformers(size):
  hf = sizes.hf_config(size)
  config = qwen3_5.from_hf_dict(hf)
  assert config.layout == "qwen3_5" and config.num_full_layers * 4 == config.num_hidden_layers
  shapes = jax.eval_shape(lambda: qwen3_5.init_params(config, jax.random.key(0)))
  count = sum(x.size for x in jax.tree.leaves(shapes))
  assert count == qwen3_5.param_count(config)
  with torch.device("meta"):
    reference = transformers.Qwen3_5ForCausalLM(
        transformers.Qwen3_5Config(**hf).text_config)
  expected = sum(p.numel() for p in reference.parameters())  # tied weights counted once
  assert count == expected
  assert abs(count / 1e9 - APPROX_BILLIONS[size]) < 0.1 * APPROX_BILLIONS[size]
  print(f"Qwen3.5-{size}: {count / 1e9:.3f}B text parameters")
