"""Images for the vision tower, without torch: what the Qwen image processor does
(`transformers`' Qwen2VLImageProcessorPil, which Qwen3.5 repositories name): RGB, resized
(bicubic) so both sides are multiples of patch x merge size with the pixel count within
bounds, scaled to [0, 1], normalised per channel, cut into (temporal, row, column) patches in
merge-block order; plus the placeholder text a prompt carries for each image.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os

import numpy as np
from PIL import Image

from zppo_jax.data import image_fields, visual
from zppo_jax.data import video as video_lib
from zppo_jax.data.tokenizer import IMAGE_PAD, VISION_END, VISION_START

# OpenAI CLIP's channel statistics, the processor's default.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class ImageSettings:
  """A repository's preprocessor_config.json (the fields the image path reads)."""
  patch_size: int = 16
  temporal_patch_size: int = 2
  merge_size: int = 2
  min_pixels: int = 56 * 56
  max_pixels: int = 28 * 28 * 1280
  image_mean: tuple[float, ...] = CLIP_MEAN
  image_std: tuple[float, ...] = CLIP_STD

  @classmethod
  def load(cls, path: str) -> "ImageSettings":
    """From `<path>/preprocessor_config.json` (a checkpoint directory); missing fields keep
    the processor's defaults."""
    file = os.path.join(path, "preprocessor_config.json") if os.path.isdir(path) else path
    with open(file) as f:
      doc = json.load(f)
    size = doc.get("size") or {}
    fields = dict(patch_size=doc.get("patch_size"), temporal_patch_size=doc.get(
        "temporal_patch_size"), merge_size=doc.get("merge_size"),
        min_pixels=doc.get("min_pixels", size.get("shortest_edge")),
        max_pixels=doc.get("max_pixels", size.get("longest_edge")),
        image_mean=tuple(doc["image_mean"]) if "image_mean" in doc else None,
        image_std=tuple(doc["image_std"]) if "image_std" in doc else None)
    return cls(**{k: v for k, v in fields.items() if v is not None})

  @classmethod
  def for_model(cls, tower, path: str = "", **bounds) -> "ImageSettings":
    """The settings a model's tower (`VisionConfig`) takes: the checkpoint's
    preprocessor_config.json when `path` has one, else the tower's patch sizes with the
    processor's defaults (or `bounds`: min_pixels, max_pixels); a file that disagrees with
    the tower is an error naming the field."""
    file = os.path.join(path, "preprocessor_config.json") if path else ""
    return dataclasses.replace(settings_for(cls, tower, file), **bounds)


def settings_for(cls, tower, file: str):
  """`cls` (ImageSettings, video.VideoSettings) from `file` when it exists, else with the
  tower's patch sizes and the processor's defaults; a file that disagrees with the tower
  is an error naming the field."""
  settings = cls.load(file) if file and os.path.isfile(file) else cls(
      patch_size=tower.patch_size, temporal_patch_size=tower.temporal_patch_size,
      merge_size=tower.spatial_merge_size)
  for field, want in (("patch_size", tower.patch_size),
                      ("temporal_patch_size", tower.temporal_patch_size),
                      ("merge_size", tower.spatial_merge_size)):
    if getattr(settings, field) != want:
      raise ValueError(f"{file}: {field}={getattr(settings, field)}, but the vision tower's "
                       f"{want} (config.json vision_config)")
  return settings


def open_image(reference: str, root: str = "") -> Image.Image:
  """The image a question's reference names: a key that draws it (`glyphs:12+7`,
  `data.visual`) or reads it from a dataset's row (`parquet:` / `tfds:`, `image_fields`), or
  a path, relative to `root` unless absolute. A missing or unreadable file
  is an error naming the reference."""
  stored = visual.open_key(reference) or image_fields.open_key(reference)
  if stored is not None:
    return stored
  path = reference if os.path.isabs(reference) or not root else os.path.join(root, reference)
  try:
    with Image.open(path) as image:
      image.load()
      return image
  except (OSError, ValueError) as e:
    raise FileNotFoundError(f"image {reference!r} ({path}): {type(e).__name__}: {e}") from None


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int
                 ) -> tuple[int, int]:
  """The size both of whose sides are multiples of `factor`, nearest the aspect ratio, with
  height x width in [min_pixels, max_pixels] (the processor's rule)."""
  if max(height, width) / min(height, width) > 200:
    raise ValueError(f"image of {height}x{width}: aspect ratio over 200")
  h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
  if h_bar * w_bar > max_pixels:
    beta = math.sqrt(height * width / max_pixels)
    h_bar = max(factor, math.floor(height / beta / factor) * factor)
    w_bar = max(factor, math.floor(width / beta / factor) * factor)
  elif h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h_bar = math.ceil(height * beta / factor) * factor
    w_bar = math.ceil(width * beta / factor) * factor
  return h_bar, w_bar


def to_rgb(image: Image.Image) -> Image.Image:
  """RGB, any transparency composited onto white (as the processor does)."""
  if "A" in image.getbands() or image.info.get("transparency") is not None:
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")
  return image.convert("RGB")


def preprocess(image, settings: ImageSettings) -> tuple[np.ndarray, tuple[int, int, int]]:
  """One image (a PIL image, or an [H, W, 3] uint8 array) -> (patches [gh·gw, 3·T·P·P]
  float32, grid (1, gh, gw) in patches): the vision tower's `pixel_values` rows and grid."""
  image = to_rgb(image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image)))
  p, m = settings.patch_size, settings.merge_size
  height, width = smart_resize(image.height, image.width, p * m, settings.min_pixels,
                               settings.max_pixels)
  if (height, width) != (image.height, image.width):
    image = image.resize((width, height), resample=Image.BICUBIC)
  pixels = np.asarray(image).astype(np.float64) * (1 / 255)
  pixels = ((pixels - np.asarray(settings.image_mean)) / np.asarray(settings.image_std))
  chw = np.moveaxis(pixels.astype(np.float32), -1, 0)
  gh, gw = height // p, width // p
  blocks = chw.reshape(3, gh // m, m, p, gw // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)
  frames = np.broadcast_to(blocks[:, :, :, :, :, None],  # one image: the same frame T times
                           blocks.shape[:5] + (settings.temporal_patch_size,) + blocks.shape[5:])
  return (np.ascontiguousarray(frames.reshape(gh * gw, -1), dtype=np.float32), (1, gh, gw))


def placeholder(grid: tuple[int, int, int], merge_size: int) -> str:
  """The text an image stands as in a prompt: its vision tokens between the start and end
  markers (one `<|image_pad|>` per merged patch), as the processor expands it."""
  t, h, w = grid
  return VISION_START + IMAGE_PAD * (t * h * w // merge_size ** 2) + VISION_END


class PromptImages:
  """A question's image and video references -> (placeholder text, sampler entry), the
  decoded and resized patches of the last `cache_size` images and clips kept: a buffered
  question revisited many times, and its BCQ/NCQ prompts, read their files once. The buffer
  holds only the references. `video`: the video processor's settings (`video.VideoSettings`;
  None: videos are refused)."""

  def __init__(self, settings: ImageSettings, root: str = "", cache_size: int = 256,
               video=None):
    self.settings, self.root, self.video = settings, root, video
    cache = functools.lru_cache(maxsize=max(cache_size, 0))
    self._patches, self._clips = cache(self._load), cache(self._load_clip)

  def _load(self, reference: str):
    return preprocess(open_image(reference, self.root), self.settings)

  def _load_clip(self, reference: str):
    return video_lib.clip(reference, self.video, self.root)

  def __call__(self, references, videos=()) -> tuple[str, tuple[np.ndarray, list] | None]:
    """(placeholder text before the question: its images', then its videos'; (pixel_values,
    grids) in that order, a video as one (1, h, w) grid per temporal patch, as its frames
    stand in the prompt); no references: ("", None)."""
    if not references and not videos:
      return "", None
    if videos and self.video is None:
      raise ValueError(f"videos {list(videos)[:2]}, but no video processor settings were given")
    pieces = [self._patches(r) for r in references]
    text = "".join(placeholder(g, self.settings.merge_size) for _, g in pieces)
    patches, grids = [p for p, _ in pieces], [g for _, g in pieces]
    for reference in videos:
      pixels, (gt, gh, gw), seconds = self._clips(reference)
      text += video_lib.placeholder((gt, gh, gw), seconds, self.video.merge_size)
      patches.append(pixels)
      grids += [(1, gh, gw)] * gt
    return text, (np.concatenate(patches), grids)
