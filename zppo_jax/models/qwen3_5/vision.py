"""The Qwen3.5 vision tower (`model.visual.*` of the official repositories), as
`transformers`' `Qwen3_5VisionModel`: patches of (temporal, height, width) pixels embedded by
one linear map (the Conv3d whose stride is its kernel), the learned square position grid
resampled bilinearly to each image's grid, blocks of 2-D rotary attention confined to each
frame of each image or video, and the spatial patch merger that turns each
`spatial_merge_size`² block of patches into one token of the text model's width.

The per-image layout (which patch belongs to which frame, its grid position, its taps into
the position grid) depends only on `grid_thw`, so it is computed once on the host
(`layout`) and the forward pass is one jitted program over packed patches.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from zppo_jax.models.qwen3_5.config import VisionConfig
from zppo_jax.models.qwen3_5 import params as param_tables
from zppo_jax.models.qwen3_5.params import ParamSpec

VISION = "vision"   # the stack (layer type) of the vision blocks


# ------------------------------------------------------------------------------ parameters

def param_specs(config: VisionConfig) -> list[ParamSpec]:
  """The vision tower's parameters (HF names after `model.visual.`); the blocks stack along
  a leading `layers` axis. hf_layout "conv3d": HF's [D, C, T, P, P] kernel is our [C·T·P·P, D]."""
  d, f, m = config.hidden_size, config.intermediate_size, config.merged_size

  def block(name, shape, axes, hf, layout, init):
    return ParamSpec(("blocks",) + name, shape, axes, "blocks.{i}." + hf, layout, init, VISION)

  specs = [
      ParamSpec(("patch_embed", "kernel"), (config.patch_dim, d), (None, "embed"),
                "patch_embed.proj.weight", "conv3d", "normal"),
      ParamSpec(("patch_embed", "bias"), (d,), ("norm",), "patch_embed.proj.bias", "same",
                "zeros"),
      ParamSpec(("pos_embed",), (config.num_position_embeddings, d), (None, "embed"),
                "pos_embed.weight", "same", "normal"),
  ]
  for norm in ("norm1", "norm2"):
    specs += [block((norm, "scale"), (d,), ("norm",), norm + ".weight", "same", "ones"),
              block((norm, "bias"), (d,), ("norm",), norm + ".bias", "same", "zeros")]
  for name, hf, shape, axes in [("qkv", "attn.qkv", (d, 3 * d), ("embed", "heads")),
                                ("proj", "attn.proj", (d, d), ("heads", "embed")),
                                ("fc1", "mlp.linear_fc1", (d, f), ("embed", "mlp")),
                                ("fc2", "mlp.linear_fc2", (f, d), ("mlp", "embed"))]:
    specs += [block((name, "kernel"), shape, axes, hf + ".weight", "linear", "normal"),
              block((name, "bias"), shape[1:], axes[1:], hf + ".bias", "same", "zeros")]
  specs += [
      ParamSpec(("merger", "norm", "scale"), (d,), ("norm",), "merger.norm.weight", "same",
                "ones"),
      ParamSpec(("merger", "norm", "bias"), (d,), ("norm",), "merger.norm.bias", "same", "zeros"),
      ParamSpec(("merger", "fc1", "kernel"), (m, m), ("mlp", "embed"),
                "merger.linear_fc1.weight", "linear", "normal"),
      ParamSpec(("merger", "fc1", "bias"), (m,), ("embed",), "merger.linear_fc1.bias", "same",
                "zeros"),
      ParamSpec(("merger", "fc2", "kernel"), (m, config.out_hidden_size), ("embed", None),
                "merger.linear_fc2.weight", "linear", "normal"),
      ParamSpec(("merger", "fc2", "bias"), (config.out_hidden_size,), (None,),
                "merger.linear_fc2.bias", "same", "zeros"),
  ]
  return specs


def init(config: VisionConfig, key: jax.Array, dtype=jnp.float32) -> dict:
  """A random tower (transformers' initialisation): the tiny VLMs start from one."""
  return param_tables.init_table(param_specs(config), config, key, dtype)


def shardings(config: VisionConfig, mesh, rules=None) -> dict:
  """The tower's NamedShardings on `mesh`, by the same logical-axis rules as the text model."""
  return param_tables.table_shardings(param_specs(config), config, mesh, rules)


def from_hf(config: VisionConfig, tensor) -> dict:
  """The params from HF tensors: `tensor(name)` -> numpy array of `model.visual.<name>`."""
  out = {}
  for spec in param_specs(config):
    names = ([spec.hf_name.format(i=i) for i in range(config.depth)] if spec.layer_type
             else [spec.hf_name])
    arrays = []
    for name in names:
      x = np.asarray(tensor(name))
      x = (x.T if spec.hf_layout == "linear" else
           x.reshape(x.shape[0], -1).T if spec.hf_layout == "conv3d" else x)
      if x.shape != spec.shape:
        raise ValueError(f"model.visual.{name}: shape {x.shape} (as ours), expected "
                         f"{spec.shape} from the vision_config")
      arrays.append(x)
    out[spec.path] = np.stack(arrays) if spec.layer_type else arrays[0]
  return traverse_util.unflatten_dict(out)


# ------------------------------------------------------------------------------ layout

def layout(config: VisionConfig, grid_thw: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
  """Host-side arrays of a batch of images/videos with grids (t, h, w) in patches, packed in
  order (patches within a frame in merge-block order, as the processor emits them):
    frames [F, L] int32, frame_mask [F, L] bool: the packed patches of each frame of each
      image, padded to the longest frame (attention runs per frame, never across)
    slots [N] int32: where patch n sits in `frames` (frame * L + position), to unpack
    rope_hw [N, 2] int32: the patch's (row, column) for the 2-D rotary embedding
    taps [N, 4] int32, tap_weights [N, 4] float32: bilinear taps into the position grid
      (align_corners=True, as transformers resamples it)."""
  m, side = config.spatial_merge_size, config.grid_side
  sizes, rope_hw, taps, weights = [], [], [], []  # sizes: patches of each frame
  for t, h, w in grid_thw:
    t, h, w = int(t), int(h), int(w)
    if h % m or w % m:
      raise ValueError(f"image grid {(t, h, w)}: height and width must be multiples of "
                       f"spatial_merge_size={m}")
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    order = lambda a: a.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1)
    row, col = order(rows), order(cols)
    row_taps, row_w = _axis_taps(row, h, side)
    col_taps, col_w = _axis_taps(col, w, side)
    frame_taps = (row_taps[:, :, None] * side + col_taps[:, None, :]).reshape(-1, 4)
    frame_w = (row_w[:, :, None] * col_w[:, None, :]).reshape(-1, 4)
    for _ in range(t):
      sizes.append(h * w)
      rope_hw.append(np.stack([row, col], axis=-1))
      taps.append(frame_taps)
      weights.append(frame_w)
  longest, starts = max(sizes), np.cumsum([0] + sizes[:-1])
  frames = np.zeros((len(sizes), longest), np.int32)
  frame_mask = np.zeros((len(sizes), longest), bool)
  for f, (start, size) in enumerate(zip(starts, sizes)):
    frames[f, :size], frame_mask[f, :size] = np.arange(start, start + size), True
  slots = np.concatenate([f * longest + np.arange(size) for f, size in enumerate(sizes)])
  return {"frames": frames, "frame_mask": frame_mask, "slots": slots.astype(np.int32),
          "rope_hw": np.concatenate(rope_hw).astype(np.int32),
          "taps": np.concatenate(taps).astype(np.int32),
          "tap_weights": np.concatenate(weights).astype(np.float32)}


def _axis_taps(index: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
  """Bilinear taps [n, 2] into a `side`-long axis for positions on an axis of `size`, and
  their weights (align_corners=True: the ends map to 0 and side - 1)."""
  src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
  floor = np.floor(src)
  taps = floor.astype(np.int64)[:, None] + np.arange(2)
  weights = np.clip(1 - np.abs(src[:, None] - floor[:, None] - np.arange(2)), 0, None)
  return np.clip(taps, 0, side - 1), weights.astype(np.float32)


# ------------------------------------------------------------------------------ forward

def _layer_norm(x, p, eps=1e-6):
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = ((x32 - mean) ** 2).mean(-1, keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(var + eps)
  return (y * p["scale"].astype(jnp.float32) + p["bias"].astype(jnp.float32)).astype(x.dtype)


def _linear(x, p):
  return x @ p["kernel"] + p["bias"]


def _rotate(x_NxHxK, cos_NxK, sin_NxK):
  """Rotate-half rotary embedding over the whole head dim, in float32."""
  x = x_NxHxK.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return (x * cos_NxK[:, None] + rotated * sin_NxK[:, None]).astype(x_NxHxK.dtype)


def rotary(config: VisionConfig, rope_hw_Nx2):
  """cos, sin [N, head_dim] of the axial 2-D rotary embedding: a quarter of the frequencies
  each for row and column, repeated over the two halves of the head dim."""
  quarter = config.head_dim // 2
  inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, quarter, 2, dtype=jnp.float32)
                                          / quarter))
  freqs_Nx2xF = rope_hw_Nx2.astype(jnp.float32)[..., None] * inv_freq
  angles = freqs_Nx2xF.reshape(freqs_Nx2xF.shape[0], -1)  # rows' frequencies, then columns'
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def forward(config: VisionConfig, params, pixel_values, frames, frame_mask, slots, rope_hw, taps,
            tap_weights):
  """pixel_values [N, patch_dim] (packed patches of every image and video, `layout` order)
  -> merged tokens [N / spatial_merge_size², out_hidden_size], in the params' dtype."""
  dtype = params["pos_embed"].dtype
  heads, head_dim = config.num_heads, config.head_dim
  x_NxD = _linear(pixel_values.astype(dtype), params["patch_embed"])
  pos_Nx4xD = params["pos_embed"][taps]
  x_NxD = x_NxD + jnp.sum(pos_Nx4xD * tap_weights[..., None].astype(dtype), axis=1)
  cos, sin = rotary(config, rope_hw)
  keys_Fx1x1xL = frame_mask[:, None, None, :]
  act = activation(config.hidden_act)

  def block(x_NxD, p):
    n = x_NxD.shape[0]
    qkv_Nx3xHxK = _linear(_layer_norm(x_NxD, p["norm1"]), p["qkv"]).reshape(n, 3, heads,
                                                                            head_dim)
    q, k, v = (qkv_Nx3xHxK[:, i] for i in range(3))
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    # per frame: [F, L, H, K] gathered from the packed patches, padding keys masked
    q_FxLxHxK, k_FxLxHxK, v_FxLxHxK = (x[frames] for x in (q, k, v))
    logits_FxHxLxL = jnp.einsum("flhk,fmhk->fhlm", q_FxLxHxK.astype(jnp.float32),
                                k_FxLxHxK.astype(jnp.float32)) * head_dim ** -0.5
    # padding keys: the lowest float, not -inf, so a frame of padding alone stays finite
    logits_FxHxLxL = jnp.where(keys_Fx1x1xL, logits_FxHxLxL, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits_FxHxLxL, axis=-1).astype(dtype)
    attended_FxLxHxK = jnp.einsum("fhlm,fmhk->flhk", weights, v_FxLxHxK)
    attended_NxD = attended_FxLxHxK.reshape(-1, heads * head_dim)[slots]
    x_NxD = x_NxD + _linear(attended_NxD, p["proj"])
    hidden = act(_linear(_layer_norm(x_NxD, p["norm2"]), p["fc1"]))
    return x_NxD + _linear(hidden, p["fc2"]), None

  x_NxD, _ = jax.lax.scan(block, x_NxD, params["blocks"])
  merger = params["merger"]
  merged_MxE = _layer_norm(x_NxD, merger["norm"]).reshape(-1, config.merged_size)
  hidden_MxE = jax.nn.gelu(_linear(merged_MxE, merger["fc1"]), approximate=False)
  return _linear(hidden_MxE, merger["fc2"])


def activation(name: str):
  """The blocks' activation: torch's tanh-approximated GELU or the exact one."""
  return lambda x: jax.nn.gelu(x, approximate=name == "gelu_pytorch_tanh")


_forward = jax.jit(forward, static_argnums=0)  # one program per model and patch count


def _bucket(n: int, least: int) -> int:
  """n rounded up to 8 steps per power of two (at most 1/8 of padding), at least `least`."""
  step = 1 << max(max(n - 1, 0).bit_length() - 3, 0)
  return max(least, -(-n // step) * step)


def padded_sizes(meta: dict[str, np.ndarray], merge_unit: int) -> tuple[int, int, int]:
  """(patches, frames, frame length) of a layout rounded up to their buckets (`_bucket`)."""
  n, (frames, longest) = len(meta["slots"]), meta["frames"].shape
  return _bucket(n, 16 * merge_unit), _bucket(frames, 1), _bucket(longest, 16)


def pad_layout(meta: dict[str, np.ndarray], pixel_values, merge_unit: int,
               sizes: tuple[int, int, int] | None = None):
  """(pixel_values, layout) with the patch, frame and frame-length counts rounded up
  (`padded_sizes`, or at least to `sizes`: the train step pads every row of a chunk alike),
  so that images of other sizes reuse one compiled program. Padding frames and slots are
  masked keys; padding patches belong to no frame (they read the first slot's output) and
  their tokens, past the real ones, are dropped."""
  n, (frames, longest) = len(meta["slots"]), meta["frames"].shape
  rows, count, length = np.maximum(padded_sizes(meta, merge_unit),
                                   0 if sizes is None else sizes).tolist()
  out = {"frames": np.zeros((count, length), np.int32),
         "frame_mask": np.zeros((count, length), bool), "slots": np.zeros(rows, np.int32)}
  out["frames"][:frames, :longest] = meta["frames"]
  out["frame_mask"][:frames, :longest] = meta["frame_mask"]
  frame, position = np.divmod(meta["slots"], longest)
  out["slots"][:n] = frame * length + position
  for key in ("rope_hw", "taps", "tap_weights"):
    out[key] = np.zeros((rows,) + meta[key].shape[1:], meta[key].dtype)
    out[key][:n] = meta[key]
  pixels = np.zeros((rows, pixel_values.shape[1]), np.float32)
  pixels[:n] = pixel_values
  return pixels, out


def encode(config: VisionConfig, params, pixel_values, grid_thw) -> jax.Array:
  """`forward` (jitted) on the images of `grid_thw`, their layout computed here and padded
  (`pad_layout`): one program serves every batch of images up to the same bucket sizes."""
  meta = layout(config, grid_thw)
  merge_unit = config.spatial_merge_size ** 2
  pixels, padded = pad_layout(meta, np.asarray(pixel_values, np.float32), merge_unit)
  tokens = _forward(config, params, jnp.asarray(pixels),
                    **{k: jnp.asarray(v) for k, v in padded.items()})
  return tokens[:len(meta["slots"]) // merge_unit]
