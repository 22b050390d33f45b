"""Image preprocessing against transformers' Qwen image processor (the PIL one), and the
prompt placeholders of an image."""

import numpy as np
import pytest
from PIL import Image
from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as hf_images

from zppo_jax.data import images

SETTINGS = images.ImageSettings(patch_size=16, temporal_patch_size=2, merge_size=2,
                                min_pixels=32 * 32, max_pixels=64 * 96)


def _pictures():
  rng = np.random.default_rng(0)
  rgb = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  return [Image.fromarray(rgb(64, 96)),                     # already on the grid
          Image.fromarray(rgb(50, 70)),                     # resized up to multiples of 32
          Image.fromarray(rgb(300, 90)),                    # over max_pixels: shrunk
          Image.fromarray(rgb(40, 40)).convert("L"),        # grayscale
          Image.fromarray(rng.integers(0, 256, (33, 65, 4), dtype=np.uint8), "RGBA")]


def test_preprocessing_matches_transformers():
  processor = hf_images.Qwen2VLImageProcessorPil(
      patch_size=16, temporal_patch_size=2, merge_size=2,
      size={"shortest_edge": SETTINGS.min_pixels, "longest_edge": SETTINGS.max_pixels})
  for picture in _pictures():
    want = processor(images=[picture], return_tensors="np")
    patches, grid = images.preprocess(picture, SETTINGS)
    assert grid == tuple(want["image_grid_thw"][0]), picture.size
    np.testing.assert_allclose(patches, want["pixel_values"], atol=1e-5, rtol=0)


def test_sizes_follow_the_processor_rule():
  assert images.smart_resize(64, 96, 32, 32 * 32, 64 * 96) == (64, 96)
  h, w = images.smart_resize(300, 90, 32, 32 * 32, 64 * 96)
  assert h % 32 == w % 32 == 0 and h * w <= 64 * 96
  with pytest.raises(ValueError, match="aspect ratio over 200"):
    images.smart_resize(10, 3000, 32, 32 * 32, 10 ** 8)


def test_placeholder_counts_merged_patches():
  text = images.placeholder((1, 4, 6), merge_size=2)
  assert text == "<|vision_start|>" + "<|image_pad|>" * 6 + "<|vision_end|>"


def test_settings_load_from_a_checkpoint(tmp_path):
  (tmp_path / "preprocessor_config.json").write_text(
      '{"patch_size": 14, "merge_size": 2, "size": {"shortest_edge": 100, "longest_edge": 900},'
      ' "image_mean": [0.5, 0.5, 0.5]}')
  loaded = images.ImageSettings.load(str(tmp_path))
  assert (loaded.patch_size, loaded.min_pixels, loaded.max_pixels) == (14, 100, 900)
  assert loaded.image_mean == (0.5, 0.5, 0.5) and loaded.image_std == images.CLIP_STD
