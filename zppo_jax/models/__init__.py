"""Model families, reached by the name a run's config gives (`model.family`).

A family is a package under zppo_jax/models whose top level provides the interface below; the
sampler, the train step, the scorer, the evaluator and the loaders use nothing else of it, so
another family is one package and one line of FAMILIES. Its model config (a hashable
dataclass, a jit static argument) names its family in `family`, so code holding a model
config reaches its functions with `of(model_config)`.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

FAMILIES = {"qwen3_5": "zppo_jax.models.qwen3_5"}


class Family(Protocol):
  """What the rest of the package calls of a model family."""
  # config: from a checkpoint directory or Hugging Face config fields; real-size presets
  def load_config(self, path: str) -> Any: ...
  def from_hf_dict(self, fields: dict, source: str = ...) -> Any: ...
  presets: Any                       # module: SIZES, hf_config(size), config(size)
  # parameters: shapes, shardings on a mesh (from logical axes), random init, count
  def param_shapes(self, config, dtype=...) -> Any: ...
  def param_shardings(self, config, mesh, rules=None) -> Any: ...  # rules: sharding.py
  def logical_axes(self, config) -> Any: ...   # like params: each one's logical axis names
  def init_params(self, config, key, dtype=...) -> Any: ...
  def param_count(self, config) -> int: ...
  # forward: logits, hidden states and the vocabulary projection, one step over a cache
  def forward(self, config, params, input_ids, attention_mask=None, **kwargs) -> Any: ...
  def hidden_states(self, config, params, input_ids, attention_mask=None, **kwargs) -> Any: ...
  def logits_from_hidden(self, config, params, hidden) -> Any: ...
  def head_name(self, config) -> str: ...   # the params entry logits_from_hidden reads
  def apply(self, config, params, input_ids, attention_mask, cache, **kwargs) -> Any: ...
  def init_cache(self, config, batch: int, max_len: int, dtype=...) -> Any: ...
  CACHE_LOGICAL_AXES: Any
  Layout: Any   # (attention, mesh, batch_axes): how hidden_states' layers run on a mesh
  REMAT_POLICIES: Any
  # module: train_step(config, rows, length, ...) and prefill(config, rows, length, dtype),
  # the activations' bytes on a device (zppo_jax.memory)
  activations: Any
  # images and video: input embeddings with the vision tokens placed, multimodal positions
  def multimodal_embeddings(self, config, params, input_ids, pixel_values=None,
                            image_grid_thw=None, pixel_values_videos=None,
                            video_grid_thw=None) -> Any: ...
  def multimodal_inputs(self, config, input_ids, pixel_values, grids) -> dict: ...  # by kind
  def multimodal_positions(self, config, input_ids, attention_mask=None, image_grid_thw=None,
                           video_grid_thw=None) -> Any: ...
  def multimodal_vision_tokens(self, config, params, input_ids, pixel_values=None,
                               image_grid_thw=None, pixel_values_videos=None,
                               video_grid_thw=None, *, slots=0) -> Any: ...  # [B, M, D]
  def multimodal_place(self, config, params, input_ids, vision_tokens, is_vision=None) -> Any: ...
  def multimodal_tower_inputs(self, config, visions) -> Any: ...   # "tower_*" batch fields
  def multimodal_tower_tokens(self, config, visual, inputs) -> Any: ...
  # the vision tower (params["visual"]; `config.vision` is None for a text-only model)
  def vision_init(self, config, key, dtype=...) -> Any: ...
  def vision_shardings(self, config, mesh, rules=None) -> Any: ...
  # Hugging Face checkpoints in and out (with `vision`, the tower too; `text=False`: alone)
  def load_hf_checkpoint(self, path: str, dtype=..., mesh=None, rules=None, *,
                         vision: bool = False, text: bool = True) -> tuple[Any, Any]: ...
  def save_hf_checkpoint(self, path: str, config, params, *, source: str | None = None) -> str: ...


def get(family: str) -> Family:
  """The package of `family` (config.model.family)."""
  if family not in FAMILIES:
    raise ValueError(f"config.model.family={family!r} is not a model family of zppo_jax; "
                     f"choose one of {sorted(FAMILIES)}")
  return importlib.import_module(FAMILIES[family])


def of(model_config) -> Family:
  """The family of a model config."""
  return get(model_config.family)
