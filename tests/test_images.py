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


def test_questions_carry_image_references_through_the_buffer(tmp_path):
  """A row's `images` are references: parsed, kept by the replay buffer's JSON state as
  strings, and opened from their root when needed."""
  from zppo_jax.data.records import parse_row
  from zppo_jax.rl import replay_buffer, stages
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
  q = parse_row({"id": 1, "question": "What is drawn?", "answer": "0", "images": ["a.png"]},
                "row 1")
  assert q.images == ("a.png",)
  import dataclasses
  state, _ = replay_buffer.update(replay_buffer.BufferState(), [(dataclasses.asdict(q), 0.0)],
                                  0, threshold=0.5, capacity=4)
  again = replay_buffer.from_json(replay_buffer.to_json(state))
  assert stages.as_question(again.entries[0].question) == q
  assert images.open_image(q.images[0], str(tmp_path)).size == (8, 8)
  with pytest.raises(FileNotFoundError, match="image 'b.png'"):
    images.open_image("b.png", str(tmp_path))
  from zppo_jax.data.records import DataError
  with pytest.raises(DataError, match="field 'images' must be a list of strings"):
    parse_row({"id": 2, "question": "q", "answer": "1", "images": "a.png"}, "row 2")


def test_a_questions_images_become_prompt_text_and_pixels(tmp_path):
  rng = np.random.default_rng(3)
  for name, size in (("a.png", (64, 96)), ("b.png", (32, 32))):
    Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(tmp_path / name)
  loader = images.PromptImages(SETTINGS, str(tmp_path), cache_size=4)
  text, (pixels, grids) = loader(("a.png", "b.png"))
  assert grids == [(1, 4, 6), (1, 2, 2)]
  assert text == images.placeholder((1, 4, 6), 2) + images.placeholder((1, 2, 2), 2)
  assert pixels.shape == (4 * 6 + 2 * 2, 3 * 2 * 16 * 16)
  first, _ = images.preprocess(Image.open(tmp_path / "a.png"), SETTINGS)
  np.testing.assert_array_equal(pixels[:24], first)
  assert loader(()) == ("", None)
  # a revisit reads the cache, not the file: a later change on disk is not seen
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "b.png")
  np.testing.assert_array_equal(loader(("b.png",))[1][0], pixels[24:])
  with pytest.raises(FileNotFoundError, match="image 'c.png'"):
    loader(("c.png",))


def test_settings_follow_the_tower_unless_the_processor_file_disagrees(tmp_path):
  from zppo_jax.models.qwen3_5 import config as config_lib
  tower = config_lib.VisionConfig(depth=1, hidden_size=8, intermediate_size=8, num_heads=2,
                                  out_hidden_size=8, num_position_embeddings=4, patch_size=8)
  settings = images.ImageSettings.for_model(tower, str(tmp_path))  # no preprocessor_config
  assert (settings.patch_size, settings.merge_size) == (8, 2)
  (tmp_path / "preprocessor_config.json").write_text('{"patch_size": 16, "merge_size": 2}')
  with pytest.raises(ValueError, match="preprocessor_config.json: patch_size=16.*tower's 8"):
    images.ImageSettings.for_model(tower, str(tmp_path))
