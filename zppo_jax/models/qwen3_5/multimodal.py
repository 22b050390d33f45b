"""Images and video in the text model's input, as `transformers`' Qwen3_5Model places them:
the vision tower's tokens take the places of the image / video placeholder tokens, and the
rotary positions become three (time, height, width) per token.

Which tokens are vision tokens follows from the placeholder ids alone (`token_types`); each
maximal run of one image's placeholders takes the next image's grid, and a video's frames
(`<t> <vision_start> frame <vision_end>` each, timestamps between them) take one
(1, h, w) grid each. A run of text continues one past the largest position before it; an
image's tokens sit at (start, start + row, start + column) and advance the position by
max(rows, columns). All of it depends only on the token ids and the grids, so it is
computed on the host.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zppo_jax.models.qwen3_5 import vision
from zppo_jax.models.qwen3_5.config import Qwen3_5Config

TEXT, IMAGE, VIDEO = 0, 1, 2


def _tower(config: Qwen3_5Config):
  if config.vision is None:
    raise ValueError("this checkpoint has no vision tower (config.json without vision_config)")
  return config.vision


def tower_init(config: Qwen3_5Config, key, dtype=jnp.float32) -> dict:
  """A random vision tower for the model (params["visual"])."""
  return vision.init(_tower(config), key, dtype)


def tower_shardings(config: Qwen3_5Config, mesh, rules=None) -> dict:
  """The NamedShardings of params["visual"] on `mesh`."""
  return vision.shardings(_tower(config), mesh, rules)


def token_types(config: Qwen3_5Config, input_ids) -> np.ndarray:
  """[B, T] int: TEXT, IMAGE or VIDEO per token, from the placeholder ids."""
  ids = np.asarray(input_ids)
  return np.where(ids == config.image_token_id, IMAGE,
                  np.where(ids == config.video_token_id, VIDEO, TEXT)).astype(np.int32)


def _frames(video_grid_thw) -> list[tuple[int, int, int]]:
  """A video's (t, h, w) grid as t grids of one frame each: timestamps separate them."""
  return [(1, int(h), int(w)) for t, h, w in np.asarray(video_grid_thw).reshape(-1, 3)
          for _ in range(int(t))]


def inputs(config: Qwen3_5Config, input_ids, pixel_values, grids: Sequence) -> dict:
  """The forward's keyword inputs (pixel_values, image_grid_thw, pixel_values_videos,
  video_grid_thw; None where there are none) of a batch whose images and videos come as
  one list: `grids` [(t, h, w), ...] in reading order over the rows of `input_ids` (a
  video as one (1, h, w) grid per frame, as `data.images.PromptImages` gives them) and
  `pixel_values` their patches in that order (None: only the grids). Each maximal run of
  placeholders takes the next grid, an image's or a video frame's by its id."""
  kinds = [kind for row in token_types(config, input_ids)
           for kind, _ in itertools.groupby(row) if kind != TEXT]
  if len(kinds) != len(grids):
    raise ValueError(f"{len(kinds)} runs of image / video placeholders in input_ids, but "
                     f"{len(grids)} grids")
  ends = np.cumsum([int(np.prod(g)) for g in grids])
  if pixel_values is not None and (not len(ends) or ends[-1] != len(pixel_values)):
    raise ValueError(f"{len(pixel_values)} patches in pixel_values, but the grids make "
                     f"{ends[-1] if len(ends) else 0}")
  pieces = [None] * len(grids) if pixel_values is None else np.split(pixel_values, ends[:-1])
  out = {}
  for kind, pixels_name, grids_name in ((IMAGE, "pixel_values", "image_grid_thw"),
                                        (VIDEO, "pixel_values_videos", "video_grid_thw")):
    mine = [i for i, k in enumerate(kinds) if k == kind]
    out[grids_name] = [tuple(grids[i]) for i in mine] or None
    out[pixels_name] = (np.concatenate([pieces[i] for i in mine])
                        if mine and pixel_values is not None else None)
  return out


def positions(config: Qwen3_5Config, input_ids, attention_mask=None,
              image_grid_thw: Sequence | None = None, video_grid_thw: Sequence | None = None
              ) -> np.ndarray:
  """[3, B, T] int32 rotary positions of every token (padding: 0), images taking their
  grids in order across the batch; a run of placeholders that does not match its grid's
  token count is an error naming the row."""
  _tower(config)
  types = token_types(config, input_ids)
  batch, length = types.shape
  mask = (np.ones((batch, length), bool) if attention_mask is None
          else np.asarray(attention_mask).astype(bool))
  merge = config.vision.spatial_merge_size
  grids = {IMAGE: iter([tuple(int(x) for x in g)
                        for g in np.asarray(image_grid_thw).reshape(-1, 3)]
                       if image_grid_thw is not None else []),
           VIDEO: iter(_frames(video_grid_thw) if video_grid_thw is not None else [])}
  out = np.zeros((3, batch, length), np.int32)
  for row in range(batch):
    kept = np.flatnonzero(mask[row])
    pieces, current = [], 0
    for kind, run in itertools.groupby(types[row, kept]):
      count = len(list(run))
      if kind == TEXT:
        pieces.append(np.broadcast_to(np.arange(current, current + count), (3, count)))
        current += count
        continue
      grid = next(grids[kind], None)
      name = "image" if kind == IMAGE else "video frame"
      if grid is None:
        raise ValueError(f"row {row}: more {name} placeholders than {name} grids")
      t, h, w = grid[0], grid[1] // merge, grid[2] // merge
      if t * h * w != count:
        raise ValueError(f"row {row}: a run of {count} {name} placeholder tokens, but its grid "
                         f"{grid} makes {t * h * w} tokens")
      tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
      pieces.append(np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + current)
      current += max(h, w)
    if pieces:
      out[:, row, kept] = np.concatenate(pieces, axis=1)
  for kind, name in ((IMAGE, "image"), (VIDEO, "video frame")):
    if next(grids[kind], None) is not None:
      raise ValueError(f"more {name} grids than runs of {name} placeholders in input_ids")
  return out


def vision_tokens(config: Qwen3_5Config, params, input_ids, pixel_values=None,
                  image_grid_thw=None, pixel_values_videos=None, video_grid_thw=None, *,
                  slots: int = 0):
  """[B, M, D] the vision tower's tokens (`params["visual"]`) of each row, the k-th for the
  row's k-th image / video placeholder of `input_ids` in reading order, zeros after its
  last (M: the most placeholders in a row, at least `slots`): what `place` puts into the
  token embeddings. Compact, not [B, T, D]: a frozen tower's output, computed once per
  prompt, is an input of the train step like the tokens (batch field `vision_tokens`)."""
  ids = np.asarray(input_ids)
  is_vision = (ids == config.image_token_id) | (ids == config.video_token_id)
  slot = np.cumsum(is_vision, axis=1) - 1      # a placeholder's index among its row's
  out = jnp.zeros((ids.shape[0], max(slots, int(is_vision.sum(1).max(initial=0)), 1),
                   config.hidden_size), params["embed"].dtype)
  for token, pixels, grids, name in ((config.image_token_id, pixel_values, image_grid_thw,
                                      "image"),
                                     (config.video_token_id, pixel_values_videos,
                                      video_grid_thw, "video")):
    if pixels is None:
      continue
    if "visual" not in params:
      raise ValueError(f"{name} inputs, but the params hold no vision tower ('visual')")
    tokens = vision.encode(config.vision, params["visual"], pixels,
                           np.asarray(grids).reshape(-1, 3).tolist())
    rows, cols = np.nonzero(ids == token)
    if len(rows) != tokens.shape[0]:
      raise ValueError(f"{len(rows)} {name} placeholder tokens in input_ids, but the {name} "
                       f"grids make {tokens.shape[0]}")
    out = out.at[rows, slot[rows, cols]].set(tokens.astype(out.dtype))
  return out


TOWER_PREFIX = "tower_"   # batch fields of the tower's inputs (a trainable tower's rows)


def tower_inputs(config: Qwen3_5Config, visions: Sequence) -> dict[str, np.ndarray]:
  """Per row, the tower's inputs for its prompt's images (`visions`: (pixel_values, grids)
  or None), padded alike: `tower_<name>` [R, ...] for `pixel_values` and each `vision.layout`
  array. A row without images gets masked padding. The train step runs the tower on them
  (`tower_tokens`) when the tower trains."""
  tower, unit = _tower(config), config.vision.spatial_merge_size ** 2
  metas = [None if v is None else vision.layout(tower, [tuple(g) for g in v[1]])
           for v in visions]
  sizes = tuple(np.max([vision.padded_sizes(m, unit) for m in metas if m is not None] or
                       [vision.padded_sizes(vision.layout(tower, [(1, 2, 2)]), unit)], axis=0))
  rows = []
  for v, meta in zip(visions, metas):
    if meta is None:  # a dummy image, every key masked: its tokens are placed nowhere
      meta = vision.layout(tower, [(1, 2, 2)])
      meta["frame_mask"][:] = False
      v = (np.zeros((4, tower.patch_dim), np.float32), None)
    pixels, padded = vision.pad_layout(meta, np.asarray(v[0], np.float32), unit, sizes)
    rows.append({"pixel_values": pixels, **padded})
  return {TOWER_PREFIX + k: np.stack([r[k] for r in rows]) for k in rows[0]}


def tower_tokens(config: Qwen3_5Config, visual, inputs: dict):
  """[B, M, D] the tower's tokens of each row's images (traceable; gradients reach the
  tower), in `vision_tokens`' compact form."""
  fields = {k[len(TOWER_PREFIX):]: v for k, v in inputs.items()}
  return jax.vmap(lambda f: vision.forward(config.vision, visual, **f))(fields)


def place(config: Qwen3_5Config, params, input_ids, vision_tokens_BxMxD, is_vision=None):
  """[B, T, D] input embeddings: the tokens' own, and at a row's k-th placeholder its k-th
  vision token (`vision_tokens`' compact form; traceable: the train step's form; gradients
  reach the token embeddings, and the tower's when it made them in the step).
  `is_vision` [B, T] names the placeholders (a train row's prompt: a placeholder id the
  policy sampled in its completion is text, as it was when sampled); default: every one."""
  if is_vision is None:
    is_vision = ((input_ids == config.image_token_id) | (input_ids == config.video_token_id))
  own = jnp.take(params["embed"], input_ids, axis=0)
  slot_BxT = jnp.clip(jnp.cumsum(is_vision, axis=1) - 1, 0, vision_tokens_BxMxD.shape[1] - 1)
  placed = jnp.take_along_axis(vision_tokens_BxMxD, slot_BxT[..., None], axis=1)
  return jnp.where(is_vision[..., None], placed.astype(own.dtype), own)


def embed(config: Qwen3_5Config, params, input_ids, pixel_values=None, image_grid_thw=None,
          pixel_values_videos=None, video_grid_thw=None):
  """[B, T, D] input embeddings with each image / video placeholder replaced by the next
  vision token (`vision_tokens`, then `place`)."""
  tokens = vision_tokens(config, params, input_ids, pixel_values, image_grid_thw,
                         pixel_values_videos, video_grid_thw)
  return place(config, params, jnp.asarray(np.asarray(input_ids)), tokens)
