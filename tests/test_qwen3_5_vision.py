"""The vision tower against transformers' Qwen3_5VisionModel on a tiny random config: images
of different grids and a two-frame video packed in one call."""

import numpy as np
import pytest
import torch
from transformers.models.qwen3_5 import configuration_qwen3_5, modeling_qwen3_5

from zppo_jax.models.qwen3_5 import vision

HF = dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=4, out_hidden_size=40,
          num_position_embeddings=16, patch_size=4, temporal_patch_size=2, spatial_merge_size=2,
          in_channels=3)
GRIDS = [(1, 4, 6), (1, 2, 2), (2, 4, 4)]   # (t, h, w) in patches; the last is a video


@pytest.fixture(scope="module")
def reference():
  torch.manual_seed(0)
  hf_config = configuration_qwen3_5.Qwen3_5VisionConfig(**HF)
  model = modeling_qwen3_5.Qwen3_5VisionModel(hf_config).eval()
  with torch.no_grad():  # non-trivial norms and biases, so every parameter matters
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return hf_config, model


def test_vision_tower_matches_transformers(reference):
  hf_config, model = reference
  config = vision.config_from_hf(hf_config.to_dict())
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  params = vision.from_hf(config, lambda name: state[name])
  patches = sum(t * h * w for t, h, w in GRIDS)
  pixels = np.random.default_rng(0).normal(size=(patches, config.patch_dim)).astype(np.float32)
  with torch.no_grad():
    want = model(torch.from_numpy(pixels), grid_thw=torch.tensor(GRIDS)).pooler_output.numpy()
  got = np.asarray(vision.encode(config, params, pixels, GRIDS))
  assert got.shape == want.shape == (patches // 4, HF["out_hidden_size"])
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_attention_stays_inside_each_frame(reference):
  """Changing one image's pixels leaves the other images' tokens exactly as they were."""
  hf_config, model = reference
  config = vision.config_from_hf(hf_config.to_dict())
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  params = vision.from_hf(config, lambda name: state[name])
  sizes = [t * h * w for t, h, w in GRIDS]
  pixels = np.random.default_rng(1).normal(size=(sum(sizes), config.patch_dim)).astype(
      np.float32)
  other = pixels.copy()
  other[:sizes[0]] += 1.0
  a = np.asarray(vision.encode(config, params, pixels, GRIDS))
  b = np.asarray(vision.encode(config, params, other, GRIDS))
  first = sizes[0] // 4
  assert np.abs(a[:first] - b[:first]).max() > 1e-3
  np.testing.assert_array_equal(a[first:], b[first:])


def test_bad_configs_grids_and_tensors_are_named(reference):
  with pytest.raises(ValueError, match="vision_config: missing field"):
    vision.config_from_hf({"depth": 1})
  config = vision.config_from_hf(HF)
  with pytest.raises(ValueError, match="multiples of spatial_merge_size=2"):
    vision.layout(config, [(1, 3, 4)])
  state = {k: v.detach().numpy() for k, v in reference[1].state_dict().items()}
  state["pos_embed.weight"] = np.zeros((9, 32), np.float32)  # a 3x3 grid, not the config's 4x4
  with pytest.raises(ValueError, match=r"model.visual.pos_embed.weight: shape \(9, 32\)"):
    vision.from_hf(config, lambda name: state[name])
