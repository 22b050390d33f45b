"""Qwen3.5 text-model configuration, read from and written back to Hugging Face `config.json`.

Two layouts exist on the Hub: text-only `Qwen3_5ForCausalLM` checkpoints (`model_type`
"qwen3_5_text", weights under `model.*`) and the official multimodal
`Qwen3_5ForConditionalGeneration` repositories (`model_type` "qwen3_5", the text fields
under `text_config`, text weights under `model.language_model.*`). `Qwen3_5Config` holds the
text fields either way and remembers the layout and the original JSON so a save can write
the same layout back.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, ClassVar

TEXT_MODEL_TYPE = "qwen3_5_text"
MULTIMODAL_MODEL_TYPE = "qwen3_5"
LAYER_TYPES = ("linear_attention", "full_attention")


class ConfigError(ValueError):
  """A config.json that does not describe a supported Qwen3.5 text model."""


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """The `vision_config` of a Qwen3.5 config.json (hashable: a jit static argument)."""
  depth: int
  hidden_size: int
  intermediate_size: int
  num_heads: int
  out_hidden_size: int
  num_position_embeddings: int
  in_channels: int = 3
  patch_size: int = 16
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  rope_theta: float = 10000.0
  hidden_act: str = "gelu_pytorch_tanh"

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    """Pixels per patch, in the order (channel, time, row, column) of `pixel_values` rows."""
    return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

  @property
  def grid_side(self) -> int:
    return int(round(self.num_position_embeddings ** 0.5))

  @property
  def layer_types(self) -> tuple[str, ...]:
    return ("vision",) * self.depth  # one stack of blocks (vision.VISION)

  @property
  def merged_size(self) -> int:
    return self.hidden_size * self.spatial_merge_size ** 2


VISION_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu")


def vision_from_hf_dict(fields: dict, source: str = "vision_config") -> VisionConfig:
  """A VisionConfig from the `vision_config` dict of a config.json; errors name the field."""
  names = {f.name for f in dataclasses.fields(VisionConfig)} - {"rope_theta"}
  kwargs = {k: fields[k] for k in names if k in fields}
  missing = [f.name for f in dataclasses.fields(VisionConfig)
             if f.default is dataclasses.MISSING and f.name not in kwargs]
  if missing:
    raise ConfigError(f"{source}: missing field(s) {missing}")
  for key in ("patch_size", "temporal_patch_size"):
    if isinstance(kwargs.get(key), (list, tuple)):
      if len(set(kwargs[key])) != 1:
        raise ConfigError(f"{source}.{key}={kwargs[key]}: only square patches are supported")
      kwargs[key] = kwargs[key][0]
  rope = fields.get("rope_parameters") or {}
  if rope.get("rope_type", "axial") != "axial":
    raise ConfigError(f"{source}.rope_parameters.rope_type={rope['rope_type']!r}: only axial")
  config = VisionConfig(**kwargs, rope_theta=float(rope.get("rope_theta", 10000.0)))
  if config.hidden_act not in VISION_ACTIVATIONS:
    raise ConfigError(f"{source}.hidden_act={config.hidden_act!r}: one of {VISION_ACTIVATIONS}")
  if config.grid_side ** 2 != config.num_position_embeddings:
    raise ConfigError(f"{source}.num_position_embeddings={config.num_position_embeddings} is "
                     "not a square grid")
  if config.hidden_size % config.num_heads or config.head_dim % 4:
    raise ConfigError(f"{source}: hidden_size / num_heads must be a multiple of 4")
  return config


@dataclasses.dataclass(frozen=True)
class Qwen3_5Config:
  """Static shape and hyper-parameters of the text decoder (hashable: usable as a jit static arg)."""

  family: ClassVar[str] = "qwen3_5"   # its package under zppo_jax/models (`models.of`)

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int
  head_dim: int
  linear_conv_kernel_dim: int
  linear_key_head_dim: int
  linear_value_head_dim: int
  linear_num_key_heads: int
  linear_num_value_heads: int
  layer_types: tuple[str, ...]
  rope_theta: float = 10_000.0
  partial_rotary_factor: float = 0.25
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  hidden_act: str = "silu"
  max_position_embeddings: int = 32768
  eos_token_id: tuple[int, ...] = ()
  # Multimodal rotary positions: how many rotary frequencies follow each of (time, height,
  # width), interleaved; text tokens have the same position on all three.
  mrope_section: tuple[int, ...] = (11, 11, 10)
  # The vision tower and its placeholder tokens (multimodal repositories; None / -1 else).
  vision: VisionConfig | None = None
  image_token_id: int = -1
  video_token_id: int = -1
  # "qwen3_5_text" or "qwen3_5": which Hugging Face layout the checkpoint came in.
  layout: str = TEXT_MODEL_TYPE
  # The original config.json, as a JSON string, so a save reproduces fields this class ignores.
  hf_json: str = dataclasses.field(default="", compare=False, repr=False)

  def __post_init__(self):
    if len(self.layer_types) != self.num_hidden_layers:
      raise ConfigError(
          f"layer_types has {len(self.layer_types)} entries but num_hidden_layers is "
          f"{self.num_hidden_layers}")
    bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
    if bad:
      raise ConfigError(f"unsupported layer_types {bad}; expected only {LAYER_TYPES}")
    if self.num_attention_heads % self.num_key_value_heads:
      raise ConfigError(
          f"num_attention_heads={self.num_attention_heads} is not a multiple of "
          f"num_key_value_heads={self.num_key_value_heads}")
    if self.linear_num_value_heads % self.linear_num_key_heads:
      raise ConfigError(
          f"linear_num_value_heads={self.linear_num_value_heads} is not a multiple of "
          f"linear_num_key_heads={self.linear_num_key_heads}")
    if self.hidden_act != "silu":
      raise ConfigError(f"hidden_act={self.hidden_act!r} is not supported (Qwen3.5 uses 'silu')")
    if self.layout not in (TEXT_MODEL_TYPE, MULTIMODAL_MODEL_TYPE):
      raise ConfigError(f"unknown layout {self.layout!r}")
    if len(self.mrope_section) != 3:
      raise ConfigError(f"mrope_section={list(self.mrope_section)} must have 3 entries (t, h, w)")
    if self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim:
      raise ConfigError(
          f"partial_rotary_factor={self.partial_rotary_factor} gives rotary dim "
          f"{self.rotary_dim} for head_dim={self.head_dim}; it must be even and in (0, head_dim]")

  # Derived sizes, named as in the Gated DeltaNet code of transformers.
  @property
  def rotary_dim(self) -> int:
    return int(self.head_dim * self.partial_rotary_factor)

  @property
  def linear_key_dim(self) -> int:
    return self.linear_num_key_heads * self.linear_key_head_dim

  @property
  def linear_value_dim(self) -> int:
    return self.linear_num_value_heads * self.linear_value_head_dim

  @property
  def linear_conv_dim(self) -> int:
    return 2 * self.linear_key_dim + self.linear_value_dim

  @property
  def num_linear_layers(self) -> int:
    return self.layer_types.count("linear_attention")

  @property
  def num_full_layers(self) -> int:
    return self.layer_types.count("full_attention")

  def replace(self, **changes) -> "Qwen3_5Config":
    return dataclasses.replace(self, **changes)


_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads")
_DEFAULTS = dict(linear_conv_kernel_dim=4, linear_key_head_dim=128, linear_value_head_dim=128,
                 linear_num_key_heads=16, linear_num_value_heads=32, rms_norm_eps=1e-6,
                 attention_bias=False, hidden_act="silu", max_position_embeddings=32768)


def from_hf_dict(hf: dict[str, Any], source: str = "config.json") -> Qwen3_5Config:
  """Builds the text config from a parsed Hugging Face config.json of either layout."""
  model_type = hf.get("model_type")
  if model_type == MULTIMODAL_MODEL_TYPE:
    if not isinstance(hf.get("text_config"), dict):
      raise ConfigError(f"{source}: model_type 'qwen3_5' needs a 'text_config' object")
    text = hf["text_config"]
    # The multimodal repos keep tie_word_embeddings at the top level.
    tie = text.get("tie_word_embeddings", hf.get("tie_word_embeddings", False))
  elif model_type == TEXT_MODEL_TYPE:
    text = hf
    tie = hf.get("tie_word_embeddings", False)
  else:
    raise ConfigError(
        f"{source}: unsupported model_type {model_type!r}; expected {TEXT_MODEL_TYPE!r} "
        f"(Qwen3_5ForCausalLM) or {MULTIMODAL_MODEL_TYPE!r} (Qwen3_5ForConditionalGeneration)")

  missing = [k for k in _REQUIRED if k not in text]
  if missing:
    raise ConfigError(f"{source}: missing keys {missing}")
  rope = dict(text.get("rope_parameters") or {})
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type != "default":
    raise ConfigError(f"{source}: rope_type {rope_type!r} is not supported (only 'default')")
  num_layers = text["num_hidden_layers"]
  layer_types = text.get("layer_types")
  if layer_types is None:  # Same rule as transformers: every k-th layer is full attention.
    interval = text.get("full_attention_interval", 4)
    layer_types = ["linear_attention" if (i + 1) % interval else "full_attention"
                   for i in range(num_layers)]
  eos = text.get("eos_token_id", hf.get("eos_token_id"))
  eos = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
  kwargs = {k: text.get(k, d) for k, d in _DEFAULTS.items()}
  multimodal = {}
  try:
    if model_type == MULTIMODAL_MODEL_TYPE and isinstance(hf.get("vision_config"), dict):
      multimodal = dict(vision=vision_from_hf_dict(hf["vision_config"],
                                                   f"{source}: vision_config"),
                        image_token_id=int(hf.get("image_token_id", -1)),
                        video_token_id=int(hf.get("video_token_id", -1)))
    return Qwen3_5Config(
        **{k: text[k] for k in _REQUIRED},
        **kwargs,
        head_dim=text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"],
        layer_types=tuple(layer_types),
        rope_theta=float(rope.get("rope_theta", text.get("rope_theta", 10_000.0))),
        partial_rotary_factor=float(
            rope.get("partial_rotary_factor", text.get("partial_rotary_factor", 0.25))),
        mrope_section=tuple(int(s) for s in rope.get("mrope_section", (11, 11, 10))),
        **multimodal,
        tie_word_embeddings=bool(tie),
        eos_token_id=eos,
        layout=model_type,
        hf_json=json.dumps(hf, sort_keys=True),
    )
  except ConfigError as e:
    raise ConfigError(f"{source}: {e}") from None


def load(path: str) -> Qwen3_5Config:
  """Reads `config.json` from a checkpoint directory (or the file itself)."""
  file = os.path.join(path, "config.json") if os.path.isdir(path) else path
  if not os.path.exists(file):
    raise FileNotFoundError(f"no config.json at {file}")
  with open(file) as f:
    try:
      hf = json.load(f)
    except json.JSONDecodeError as e:
      raise ConfigError(f"{file}: not valid JSON ({e})") from None
  return from_hf_dict(hf, source=file)


def to_hf_dict(config: Qwen3_5Config) -> dict[str, Any]:
  """The config.json for `config.layout`, starting from the loaded JSON when there is one."""
  text = {
      "model_type": TEXT_MODEL_TYPE,
      "vocab_size": config.vocab_size,
      "hidden_size": config.hidden_size,
      "intermediate_size": config.intermediate_size,
      "num_hidden_layers": config.num_hidden_layers,
      "num_attention_heads": config.num_attention_heads,
      "num_key_value_heads": config.num_key_value_heads,
      "head_dim": config.head_dim,
      "linear_conv_kernel_dim": config.linear_conv_kernel_dim,
      "linear_key_head_dim": config.linear_key_head_dim,
      "linear_value_head_dim": config.linear_value_head_dim,
      "linear_num_key_heads": config.linear_num_key_heads,
      "linear_num_value_heads": config.linear_num_value_heads,
      "layer_types": list(config.layer_types),
      "rms_norm_eps": config.rms_norm_eps,
      "tie_word_embeddings": config.tie_word_embeddings,
      "attention_bias": config.attention_bias,
      "hidden_act": config.hidden_act,
      "max_position_embeddings": config.max_position_embeddings,
  }
  if config.eos_token_id:
    eos = list(config.eos_token_id)
    text["eos_token_id"] = eos[0] if len(eos) == 1 else eos
  original = json.loads(config.hf_json) if config.hf_json else {}
  if config.layout == MULTIMODAL_MODEL_TYPE:
    out = dict(original)
    old_text = dict(out.get("text_config") or {})
    rope = dict(old_text.get("rope_parameters") or {"rope_type": "default"})
    old_text.pop("rope_theta", None)
    old_text.pop("partial_rotary_factor", None)
    old_text.pop("full_attention_interval", None)
    rope.update(rope_theta=config.rope_theta, partial_rotary_factor=config.partial_rotary_factor)
    out["text_config"] = {**old_text, **text, "rope_parameters": rope}
    out["model_type"] = MULTIMODAL_MODEL_TYPE
    out["tie_word_embeddings"] = config.tie_word_embeddings
    out.setdefault("architectures", ["Qwen3_5ForConditionalGeneration"])
    return out
  out = dict(original) if original.get("model_type") == TEXT_MODEL_TYPE else {}
  rope = dict(out.get("rope_parameters") or {"rope_type": "default"})
  for key in ("rope_theta", "partial_rotary_factor", "full_attention_interval"):
    out.pop(key, None)
  rope.update(rope_theta=config.rope_theta, partial_rotary_factor=config.partial_rotary_factor)
  out.update(text, rope_parameters=rope, architectures=["Qwen3_5ForCausalLM"])
  return out
