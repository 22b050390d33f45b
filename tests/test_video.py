"""Video preprocessing: hand-computed cases, and transformers' Qwen3-VL video processor:
frame sampling, the clip's size rule, the resize (torch's uint8 antialiased bicubic, the op
torchvision's resize runs on a CPU; torchvision itself has no wheel beside this CPU torch),
the patch layout with temporal padding, the timestamps and the prompt text."""

import dataclasses
import importlib
import os

import numpy as np
import pytest

from zppo_jax.data import video

SETTINGS = video.VideoSettings(min_pixels=4 * 32 * 32, max_pixels=12 * 64 * 64)


def test_frames_are_sampled_at_the_settings_fps():
  # 3 s at 30 fps, 2 per second: 6 frames from the first to the last
  np.testing.assert_array_equal(video.sample_frames(90, 30.0, SETTINGS), [0, 18, 36, 53, 71, 89])
  # a short clip: min_frames (4), but never more than it has
  np.testing.assert_array_equal(video.sample_frames(7, 24.0, SETTINGS), [0, 2, 4, 6])
  np.testing.assert_array_equal(video.sample_frames(3, 24.0, SETTINGS), [0, 1, 2])
  # no fps known: 24 assumed (50 frames ~ 2.1 s -> 4 frames)
  np.testing.assert_array_equal(video.sample_frames(50, None, SETTINGS), [0, 16, 33, 49])
  np.testing.assert_array_equal(video.sample_frames(40, 30.0, SETTINGS, num_frames=5),
                                [0, 10, 20, 29, 39])


def test_clip_sizes_follow_the_size_rule():
  assert video.smart_resize(4, 64, 96, 2, 32, 4 * 32 * 32, 12 * 64 * 64) == (64, 96)
  # 8 frames of 480x640 are over 12*64*64 pixels: each side shrunk by the same factor
  h, w = video.smart_resize(8, 480, 640, 2, 32, 4 * 32 * 32, 12 * 64 * 64)
  assert (h, w) == (64, 64) and 8 * h * w <= 12 * 64 * 64
  # under min_pixels: grown
  assert video.smart_resize(2, 32, 32, 2, 32, 4 * 32 * 32, 10 ** 7) == (64, 64)
  with pytest.raises(ValueError, match="aspect ratio over 200"):
    video.smart_resize(2, 32, 9000, 2, 32, 1, 10 ** 9)


def test_patch_layout_and_temporal_padding():
  """5 frames on the grid (64x96, patch 16, merge 2, temporal 2): 3 temporal patches, the
  last frame repeated; each row is one (time, row, column) patch, merge blocks contiguous,
  its values in (channel, frame, pixel row, pixel column) order."""
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (5, 64, 96, 3), dtype=np.uint8)
  patches, grid = video.preprocess(list(frames), SETTINGS)
  assert grid == (3, 4, 6) and patches.shape == (3 * 4 * 6, 3 * 2 * 16 * 16)
  clip = (frames.astype(np.float64) / 255 - 0.5) / 0.5
  clip = np.concatenate([clip, clip[-1:]])  # 6 frames

  def patch(t, row, col):  # [C, T, P, P] of grid patch (row, col) of temporal patch t
    block = clip[2 * t:2 * t + 2, 16 * row:16 * row + 16, 16 * col:16 * col + 16]
    return np.transpose(block, (3, 0, 1, 2)).ravel()

  order = [(t, 2 * br + mr, 2 * bc + mc) for t in range(3) for br in range(2)
           for bc in range(3) for mr in range(2) for mc in range(2)]
  for i, (t, row, col) in enumerate(order):
    np.testing.assert_allclose(patches[i], patch(t, row, col), atol=1e-6, rtol=0)


def test_timestamps_and_prompt_text():
  # frames 0, 15, 30, 45, 60 at 30 fps, padded with 60: patches (0, 0.5), (1, 1.5), (2, 2)
  seconds = video.timestamps([0, 15, 30, 45, 60], 30.0, 2)
  assert seconds == pytest.approx([0.25, 1.25, 2.0])
  text = video.placeholder((3, 4, 6), seconds, merge_size=2)
  frame = "<|vision_start|>" + "<|video_pad|>" * 6 + "<|vision_end|>"
  assert text == "<0.2 seconds>" + frame + "<1.2 seconds>" + frame + "<2.0 seconds>" + frame
  with pytest.raises(ValueError, match="2 timestamps for a video of 3 temporal patches"):
    video.placeholder((3, 4, 6), seconds[:2], 2)


def test_a_clip_too_short_or_of_mixed_sizes_is_named():
  with pytest.raises(ValueError, match="a clip of 1 frames: at least 2"):
    video.preprocess([np.zeros((64, 64, 3), np.uint8)], SETTINGS)
  with pytest.raises(ValueError, match=r"frames differ in size: \[\(64, 48\), \(64, 64\)\]"):
    video.preprocess([np.zeros((64, 64, 3), np.uint8), np.zeros((48, 64, 3), np.uint8)],
                     SETTINGS)


def test_a_questions_videos_are_references_read_as_frames(tmp_path):
  """A row's `videos` are references: a directory of frames (name order) or "|"-joined
  frame references, with an optional rate; the loader puts each clip's frames behind their
  timestamps after the images, one (1, h, w) grid per temporal patch."""
  from PIL import Image
  from zppo_jax.data import images
  from zppo_jax.data.records import DataError, parse_row
  rng = np.random.default_rng(0)
  frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
  os.makedirs(tmp_path / "clip")
  for i, f in reversed(list(enumerate(frames))):  # written out of order: read by name
    Image.fromarray(f).save(tmp_path / "clip" / f"{i:03d}.png")
  (tmp_path / "clip" / "notes.txt").write_text("not a frame")
  q = parse_row({"id": 1, "question": "What moves?", "answer": "0",
                 "videos": ["clip|fps=2", "|".join(f"clip/{i:03d}.png" for i in range(4))]},
                "row 1")
  read, fps = video.open_clip(q.videos[0], str(tmp_path))
  assert fps == 2.0 and [np.asarray(x).tolist() for x in read] == [f.tolist() for f in frames]
  assert video.open_clip(q.videos[1], str(tmp_path))[1] is None
  loader = images.PromptImages(images.ImageSettings(), str(tmp_path), video=SETTINGS)
  text, (pixels, grids) = loader((), q.videos[:1])
  patches, grid = video.preprocess(frames, SETTINGS)
  assert grids == [(1,) + grid[1:]] * grid[0]
  np.testing.assert_array_equal(pixels, patches)
  assert text == video.placeholder(grid, video.timestamps(range(4), 2.0, 2), 2)
  from zppo_jax.rl import replay_buffer, stages
  state, _ = replay_buffer.update(replay_buffer.BufferState(), [(dataclasses.asdict(q), 0.0)],
                                  0, threshold=0.5, capacity=4)
  assert stages.as_question(replay_buffer.from_json(replay_buffer.to_json(state))
                            .entries[0].question) == q
  with pytest.raises(ValueError, match="no video processor settings"):
    images.PromptImages(images.ImageSettings())((), q.videos)
  with pytest.raises(ValueError, match="fps= must be a positive number"):
    video.open_clip("clip|fps=fast", str(tmp_path))
  os.makedirs(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="holds no frame images"):
    video.open_clip("empty", str(tmp_path))
  with pytest.raises(DataError, match="field 'videos' must be a list of strings"):
    parse_row({"id": 2, "question": "q", "answer": "1", "videos": "clip"}, "row 2")


def _transformers_qwen3_vl(name):
  """A transformers module of Qwen3-VL imported whole (the package's lazy name asks for
  torchvision on first use)."""
  return importlib.import_module(f"transformers.models.qwen3_vl.{name}")


def _transformers_video_processor(settings):
  return _transformers_qwen3_vl("video_processing_qwen3_vl").Qwen3VLVideoProcessor(
      patch_size=settings.patch_size, temporal_patch_size=settings.temporal_patch_size,
      merge_size=settings.merge_size, fps=settings.fps, min_frames=settings.min_frames,
      max_frames=settings.max_frames, image_mean=list(settings.image_mean),
      image_std=list(settings.image_std),
      size={"shortest_edge": settings.min_pixels, "longest_edge": settings.max_pixels})


def _torch_resize(frames, height, width):
  """What torchvision's `resize(..., BICUBIC, antialias=True)`, which transformers' video
  processor calls, runs for uint8 frames on a CPU: torch's own uint8 kernel."""
  import torch
  clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
  out = torch.nn.functional.interpolate(clip, size=(height, width), mode="bicubic",
                                        align_corners=False, antialias=True)
  return out.permute(0, 2, 3, 1).numpy()


def test_resize_equals_torch_uint8_bicubic_to_the_bit():
  """Down, up and mixed, noise (where pass order and clipping show) and gradients."""
  rng = np.random.default_rng(0)
  for trial in range(40):
    height, width, new_height, new_width = (int(x) for x in rng.integers(5, 200, 4))
    frames = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    if trial % 2:
      rows, cols = np.mgrid[:height, :width]
      frames[:] = np.stack([(3 * cols + rows) % 256, rows * cols // 7 % 256, 5 * rows % 256],
                           -1).astype(np.uint8)
    np.testing.assert_array_equal(video.resize(frames, new_height, new_width),
                                  _torch_resize(frames, new_height, new_width),
                                  err_msg=f"{height}x{width} -> {new_height}x{new_width}")
  with pytest.raises(ValueError, match="uint8 frames"):
    video.resize(np.zeros((2, 8, 8, 3), np.float32), 4, 4)


def test_the_video_path_equals_transformers_video_processor():
  """transformers' own Qwen3-VL video processor code, its torchvision resize and normalize
  replaced by the torch ops they run: frame sampling, the clip's size rule, then clips on and off the
  grid (downscaled, upscaled, an odd frame count padded with its last frame) resized,
  normalised and patched; the timestamps and the prompt text of a clip."""
  import torch
  from transformers.video_utils import VideoMetadata
  processor = _transformers_video_processor(SETTINGS)
  their_smart_resize = _transformers_qwen3_vl("video_processing_qwen3_vl").smart_resize
  for total, fps in ((90, 30.0), (7, 24.0), (3, 24.0), (50, None), (1000, 25.0), (91, 29.97)):
    metadata = VideoMetadata(total_num_frames=total, fps=fps or video.UNKNOWN_FPS)
    np.testing.assert_array_equal(video.sample_frames(total, fps, SETTINGS),
                                  processor.sample_frames(metadata), err_msg=f"{total}@{fps}")
  for frames, height, width in ((4, 64, 96), (8, 480, 640), (2, 32, 32), (5, 70, 33),
                                (16, 1080, 1920), (3, 20, 300)):
    ours = video.smart_resize(frames, height, width, 2, 32, SETTINGS.min_pixels,
                              SETTINGS.max_pixels)
    assert ours == their_smart_resize(
        frames, height, width, temporal_factor=2, factor=32, min_pixels=SETTINGS.min_pixels,
        max_pixels=SETTINGS.max_pixels), (frames, height, width)
  rng = np.random.default_rng(1)
  for count, height, width in ((5, 64, 96), (4, 64, 96), (4, 70, 33), (5, 100, 150),
                               (3, 240, 320), (4, 37, 200)):
    frames = rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)
    patches, grid = video.preprocess(list(frames), SETTINGS)
    size = their_smart_resize(count, height, width, temporal_factor=2, factor=32,
                              min_pixels=SETTINGS.min_pixels, max_pixels=SETTINGS.max_pixels)
    resized = torch.from_numpy(_torch_resize(frames, *size)).permute(0, 3, 1, 2)
    # transformers' fused rescale and normalisation (its torchvision normalize, by hand)
    mean, std = (torch.tensor(v).view(3, 1, 1) * 255 for v in (SETTINGS.image_mean,
                                                              SETTINGS.image_std))
    clip = (resized[None].float() - mean) / std
    theirs, *their_grid = processor.patchify(clip, patch_size=16, merge_size=2,
                                             temporal_patch_size=2)
    assert grid == tuple(their_grid), (count, height, width)
    np.testing.assert_allclose(patches, theirs[0].numpy(), atol=1e-6, rtol=0,
                               err_msg=f"{count} frames of {height}x{width}")
  # the prompt text: transformers' processor code on the same grid and frame indices
  text_processor = object.__new__(_transformers_qwen3_vl("processing_qwen3_vl").Qwen3VLProcessor)
  text_processor.video_processor, text_processor.video_token = processor, "<|video_pad|>"
  text_processor.vision_start_token = "<|vision_start|>"
  text_processor.vision_end_token = "<|vision_end|>"
  kept = video.sample_frames(91, 29.97, SETTINGS)   # 6 frames: 3 temporal patches
  grid = (3, 4, 6)
  metadata = VideoMetadata(total_num_frames=91, fps=29.97, frames_indices=kept)
  expected = text_processor.replace_video_token(
      {"video_grid_thw": torch.tensor([grid]), "video_metadata": [metadata]}, 0)
  assert video.placeholder(grid, video.timestamps(kept, 29.97, 2), 2) == expected
