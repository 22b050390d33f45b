"""Videos for the vision tower, without torch: what the Qwen3-VL video processor (which
Qwen3.5 repositories name) does. Frames are sampled uniformly at `fps` (between min_frames
and max_frames), resized so both sides are multiples of patch x merge size with the clip's
pixel count within bounds, normalised, padded to a whole number of temporal patches with
the last frame, and cut into (time, row, column) patches in merge-block order. In the prompt
each temporal patch of frames stands behind its timestamp (`placeholder`).

Frames are resized as transformers' processor resizes them on a CPU (torchvision's resize of
uint8 frames, which runs torch's antialiased bicubic kernel in fixed point): `resize` is that
arithmetic in numpy, equal to it to the last bit. PIL's bicubic, which the image path uses,
differs from it by up to 20 levels on detailed frames (another pass order and intermediate
clipping).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Sequence

import numpy as np
from PIL import Image

from zppo_jax.data import images as images_lib
from zppo_jax.data.tokenizer import VIDEO_PAD, VISION_END, VISION_START

STANDARD_MEAN = STANDARD_STD = (0.5, 0.5, 0.5)   # the video processor's defaults
UNKNOWN_FPS = 24.0   # the rate a clip of unknown rate is sampled (and timed) at
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclasses.dataclass(frozen=True)
class VideoSettings:
  """A repository's video_preprocessor_config.json (the fields the video path reads)."""
  patch_size: int = 16
  temporal_patch_size: int = 2
  merge_size: int = 2
  min_pixels: int = 128 * 32 * 32
  max_pixels: int = 32 * 32 * 768
  fps: float = 2.0
  min_frames: int = 4
  max_frames: int = 768
  image_mean: tuple[float, ...] = STANDARD_MEAN
  image_std: tuple[float, ...] = STANDARD_STD

  @classmethod
  def load(cls, path: str) -> "VideoSettings":
    """From `<path>/video_preprocessor_config.json`; missing fields keep the defaults."""
    file = (os.path.join(path, "video_preprocessor_config.json") if os.path.isdir(path)
            else path)
    with open(file) as f:
      doc = json.load(f)
    size = doc.get("size") or {}
    fields = {k: doc.get(k) for k in ("patch_size", "temporal_patch_size", "merge_size", "fps",
                                      "min_frames", "max_frames")}
    fields.update(min_pixels=size.get("shortest_edge"), max_pixels=size.get("longest_edge"),
                  image_mean=tuple(doc["image_mean"]) if "image_mean" in doc else None,
                  image_std=tuple(doc["image_std"]) if "image_std" in doc else None)
    return cls(**{k: v for k, v in fields.items() if v is not None})

  @classmethod
  def for_model(cls, tower, path: str = "") -> "VideoSettings":
    """The checkpoint's video_preprocessor_config.json when `path` has one, else the
    tower's patch sizes with the processor's defaults; a file that disagrees with the tower
    is an error naming the field."""
    file = os.path.join(path, "video_preprocessor_config.json") if path else ""
    return images_lib.settings_for(cls, tower, file)


def sample_frames(total_frames: int, video_fps: float | None, settings: VideoSettings,
                  num_frames: int | None = None) -> np.ndarray:
  """Indices of the frames to keep: `num_frames` of them, or `settings.fps` per second of
  the clip (24 fps assumed when it is not known), within [min_frames, max_frames] and the
  clip's length, spread uniformly from the first frame to the last."""
  if num_frames is None:
    fps = video_fps or UNKNOWN_FPS
    num_frames = int(total_frames / fps * settings.fps)
    num_frames = min(max(num_frames, settings.min_frames), settings.max_frames, total_frames)
  return np.linspace(0, total_frames - 1, num_frames).round().astype(int)


def smart_resize(num_frames: int, height: int, width: int, temporal_factor: int, factor: int,
                 min_pixels: int, max_pixels: int) -> tuple[int, int]:
  """Frame size of a clip: sides multiples of `factor`, the clip's pixel count (frames
  rounded to the temporal factor) within [min_pixels, max_pixels]."""
  if num_frames < temporal_factor:
    raise ValueError(f"a clip of {num_frames} frames: at least {temporal_factor} are needed")
  if height < factor or width < factor:
    scale = max(factor / height, factor / width)
    height, width = int(height * scale), int(width * scale)
  if max(height, width) / min(height, width) > 200:
    raise ValueError(f"frames of {height}x{width}: aspect ratio over 200")
  h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
  t_bar = round(num_frames / temporal_factor) * temporal_factor
  if t_bar * h_bar * w_bar > max_pixels:
    beta = math.sqrt(num_frames * height * width / max_pixels)
    h_bar = max(factor, math.floor(height / beta / factor) * factor)
    w_bar = max(factor, math.floor(width / beta / factor) * factor)
  elif t_bar * h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (num_frames * height * width))
    h_bar = math.ceil(height * beta / factor) * factor
    w_bar = math.ceil(width * beta / factor) * factor
  return h_bar, w_bar


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
  """The bicubic kernel of the antialiased resize (a = -0.5, as Pillow and torch use)."""
  x = np.abs(x)
  return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                  np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _resize_weights(size_in: int, size_out: int) -> tuple[np.ndarray, int]:
  """[size_out, size_in] int64 weights of one axis and their fixed-point precision: the
  kernel widened by the downscale factor (antialiasing), each row normalised, then rounded
  to int16 at the most bits the largest weight allows (torch's uint8 resize)."""
  scale = size_in / size_out
  support, stretch = (2.0 * scale, 1.0 / scale) if scale >= 1 else (2.0, 1.0)
  center = scale * (np.arange(size_out) + 0.5)
  lo = np.maximum((center - support + 0.5).astype(np.int64), 0)
  hi = np.minimum((center + support + 0.5).astype(np.int64), size_in)
  source = np.arange(size_in)
  inside = (source >= lo[:, None]) & (source < hi[:, None])
  weights = np.where(inside, _cubic((source - center[:, None] + 0.5) * stretch), 0.0)
  total = weights.sum(axis=1, keepdims=True)
  weights = np.divide(weights, total, out=weights.copy(), where=total != 0)
  precision = 0
  while precision < 22 and int(0.5 + weights.max() * (1 << (precision + 1))) < (1 << 15):
    precision += 1
  fixed = np.trunc(weights * (1 << precision) + np.where(weights < 0, -0.5, 0.5))
  return fixed.astype(np.int64), precision


def _resize_axis(frames: np.ndarray, size: int, axis: int) -> np.ndarray:
  """One pass over `axis` (1: height, 2: width) of [F, H, W, C] uint8 frames. The sums run
  as float64 matmuls, one frame at a time: every product and sum is an integer below 2**53,
  so they are exact, and floor((sum + half) / 2**precision) is the fixed-point kernel's
  rounding shift."""
  weights, precision = _resize_weights(frames.shape[axis], size)
  weights = weights.T.astype(np.float64)
  half, unit = float(1 << (precision - 1)), float(1 << precision)
  shape = list(frames.shape)
  shape[axis] = size
  out = np.empty(shape, np.uint8)
  for i, frame in enumerate(frames):
    sums = np.moveaxis(frame, axis - 1, -1).astype(np.float64) @ weights
    out[i] = np.moveaxis(np.clip(np.floor((sums + half) / unit), 0, 255), -1, axis - 1)
  return out


def resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 frames [F, H, W, C] -> [F, height, width, C], as torchvision's bicubic resize with
  antialiasing gives them on a CPU: the width pass, then the height pass, each rounded and
  clipped to uint8; an axis already at its size is left alone."""
  if frames.dtype != np.uint8 or frames.ndim != 4:
    raise ValueError(f"resize takes uint8 frames [F, H, W, C], got {frames.dtype} "
                     f"{frames.shape}")
  if frames.shape[2] != width:
    frames = _resize_axis(frames, width, 2)
  if frames.shape[1] != height:
    frames = _resize_axis(frames, height, 1)
  return frames


def preprocess(frames: Sequence, settings: VideoSettings
               ) -> tuple[np.ndarray, tuple[int, int, int]]:
  """Sampled frames ([H, W, 3] uint8 arrays or PIL images, all one size) -> (patches
  [gt·gh·gw, 3·T·P·P] float32, grid (gt, gh, gw)): the tower's `pixel_values_videos` rows."""
  pictures = [images_lib.to_rgb(f if isinstance(f, Image.Image) else Image.fromarray(np.asarray(f)))
              for f in frames]
  if len({x.size for x in pictures}) > 1:
    raise ValueError(f"a clip's frames differ in size: {sorted({x.size for x in pictures})} "
                     "(width, height); a video's frames are all one size")
  p, m, t = settings.patch_size, settings.merge_size, settings.temporal_patch_size
  height, width = smart_resize(len(pictures), pictures[0].height, pictures[0].width, t, p * m,
                               settings.min_pixels, settings.max_pixels)
  pixels = resize(np.stack([np.asarray(x) for x in pictures]), height, width)
  pixels = pixels.astype(np.float64) * (1 / 255)
  pixels = ((pixels - np.asarray(settings.image_mean)) / np.asarray(settings.image_std))
  clip = np.moveaxis(pixels.astype(np.float32), -1, 1)  # [F, C, H, W]
  if pad := -len(clip) % t:  # a whole number of temporal patches: repeat the last frame
    clip = np.concatenate([clip, np.repeat(clip[-1:], pad, axis=0)])
  gt, gh, gw = len(clip) // t, height // p, width // p
  patches = clip.reshape(gt, t, 3, gh // m, m, p, gw // m, m, p)
  patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (t, bh, bw, mh, mw, C, T, P, P)
  return np.ascontiguousarray(patches.reshape(gt * gh * gw, -1)), (gt, gh, gw)


def timestamps(indices: Sequence[int], video_fps: float, temporal_patch_size: int
               ) -> list[float]:
  """Seconds of each temporal patch: the mean time of its first and last frame (frames
  padded with the last index to a whole patch)."""
  indices = list(indices)
  if pad := -len(indices) % temporal_patch_size:
    indices += [indices[-1]] * pad
  seconds = [i / video_fps for i in indices]
  return [(seconds[i] + seconds[i + temporal_patch_size - 1]) / 2
          for i in range(0, len(seconds), temporal_patch_size)]


def placeholder(grid: tuple[int, int, int], seconds: Sequence[float], merge_size: int) -> str:
  """A video's text in a prompt: per temporal patch, `<t seconds>` and its vision tokens
  (one `<|video_pad|>` per merged patch of the frame) between the start and end markers."""
  gt, gh, gw = grid
  if len(seconds) != gt:
    raise ValueError(f"{len(seconds)} timestamps for a video of {gt} temporal patches")
  frame = VISION_START + VIDEO_PAD * (gh * gw // merge_size ** 2) + VISION_END
  return "".join(f"<{s:.1f} seconds>" + frame for s in seconds)


def open_clip(reference: str, root: str = "") -> tuple[list[Image.Image], float | None]:
  """The frames a question's video reference names, and their rate (None: unknown): a
  directory of frame images (`FRAME_EXTENSIONS`, in name order; relative to `root` unless
  absolute), or frame references joined by "|" (each anything `images.open_image` reads:
  paths, `glyphs:` keys, dataset keys); either may end in "|fps=<frames per second>"."""
  parts, fps = reference.split("|"), None
  if parts[-1].startswith("fps="):
    try:
      fps = float(parts.pop()[len("fps="):])
    except ValueError:
      fps = -1.0
    if not fps > 0:
      raise ValueError(f"video {reference!r}: its fps= must be a positive number")
  if len(parts) == 1:
    path = parts[0] if os.path.isabs(parts[0]) or not root else os.path.join(root, parts[0])
    if os.path.isdir(path):
      parts = [os.path.join(path, n) for n in sorted(os.listdir(path))
               if n.lower().endswith(FRAME_EXTENSIONS)]
      if not parts:
        raise FileNotFoundError(f"video {reference!r}: the directory {path} holds no frame "
                                f"images {FRAME_EXTENSIONS}")
  return [images_lib.open_image(p, root) for p in parts], fps


def clip(reference: str, settings: VideoSettings, root: str = ""
         ) -> tuple[np.ndarray, tuple[int, int, int], list[float]]:
  """A video reference -> (patches, grid (gt, gh, gw), seconds of each temporal patch): its
  frames sampled, resized and patched as the processor does (`open_clip`, `sample_frames`,
  `preprocess`, `timestamps`)."""
  frames, fps = open_clip(reference, root)
  kept = sample_frames(len(frames), fps, settings)
  patches, grid = preprocess([frames[i] for i in kept], settings)
  return patches, grid, timestamps(kept, fps or UNKNOWN_FPS, settings.temporal_patch_size)
