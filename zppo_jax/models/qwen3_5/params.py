"""The inventory of Qwen3.5 text parameters: one table that init, sharding and the
Hugging Face checkpoint mapping all read, so they cannot drift apart.

Layers of one type are stacked along a leading `layers` axis (`params["linear"]` for the
Gated DeltaNet layers, `params["full"]` for the full-attention layers), which lets the
forward pass `lax.scan` over repeated blocks instead of unrolling every layer.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from zppo_jax import sharding as sharding_lib
from zppo_jax.models.qwen3_5.config import Qwen3_5Config

LINEAR, FULL = "linear_attention", "full_attention"
STACK_KEYS = {LINEAR: "linear", FULL: "full"}


@dataclasses.dataclass(frozen=True)
class ParamSpec:
  """One parameter (one stack of them for per-layer weights)."""
  path: tuple[str, ...]          # where it lives in the params pytree
  shape: tuple[int, ...]         # per layer, without the stack axis
  axes: tuple[str, ...]          # logical axis names, one per dim of `shape`
  hf_name: str                   # Hugging Face key after the text prefix; "{i}" = layer index
  hf_layout: str                 # "linear": HF stores [out, in]; "conv": HF [C, 1, K];
                                 # "conv3d": HF [D, C, T, P, P] (the vision patches); "same"
  init: str                      # "normal", "zeros", "ones", "a_log", "conv"
  layer_type: str | None = None  # stacked over layers of this type, or a single array

  def stacked_shape(self, config: Qwen3_5Config) -> tuple[int, ...]:
    if self.layer_type is None:
      return self.shape
    return (config.layer_types.count(self.layer_type),) + self.shape

  def stacked_axes(self) -> tuple[str, ...]:
    return self.axes if self.layer_type is None else ("layers",) + self.axes

  def hf_shape(self) -> tuple[int, ...]:
    if self.hf_layout == "linear":
      return self.shape[::-1]
    if self.hf_layout == "conv":
      return (self.shape[1], 1, self.shape[0])
    if self.hf_layout == "conv3d":  # [D, C, T, P, P], flattened to [D, C·T·P·P]
      return (self.shape[1], self.shape[0])
    return self.shape

  def layer_indices(self, config: Qwen3_5Config) -> list[int]:
    return [i for i, t in enumerate(config.layer_types) if t == self.layer_type]


def param_specs(config: Qwen3_5Config) -> list[ParamSpec]:
  c = config
  d, f = c.hidden_size, c.intermediate_size
  specs = [ParamSpec(("embed",), (c.vocab_size, d), ("vocab", "embed"),
                     "embed_tokens.weight", "same", "normal"),
           ParamSpec(("final_norm",), (d,), ("norm",), "norm.weight", "same", "zeros")]
  if not c.tie_word_embeddings:  # lm_head has no text prefix in either layout
    specs.append(ParamSpec(("lm_head",), (d, c.vocab_size), ("embed", "vocab"),
                           "lm_head.weight", "linear", "normal"))

  def layer(stack, name, shape, axes, hf, layout, init):
    return ParamSpec((STACK_KEYS[stack],) + name, shape, axes, "layers.{i}." + hf, layout, init,
                     stack)

  for stack in (LINEAR, FULL):
    specs += [
        layer(stack, ("input_norm",), (d,), ("norm",), "input_layernorm.weight", "same", "zeros"),
        layer(stack, ("post_norm",), (d,), ("norm",), "post_attention_layernorm.weight", "same",
              "zeros"),
        layer(stack, ("mlp", "gate_proj"), (d, f), ("embed", "mlp"), "mlp.gate_proj.weight",
              "linear", "normal"),
        layer(stack, ("mlp", "up_proj"), (d, f), ("embed", "mlp"), "mlp.up_proj.weight",
              "linear", "normal"),
        layer(stack, ("mlp", "down_proj"), (f, d), ("mlp", "embed"), "mlp.down_proj.weight",
              "linear", "normal"),
    ]
  la = "linear_attn."
  hv = c.linear_num_value_heads
  specs += [
      layer(LINEAR, ("in_proj_qkv",), (d, c.linear_conv_dim), ("embed", "linear_qkv"),
            la + "in_proj_qkv.weight", "linear", "normal"),
      layer(LINEAR, ("in_proj_z",), (d, c.linear_value_dim), ("embed", "linear_v"),
            la + "in_proj_z.weight", "linear", "normal"),
      layer(LINEAR, ("in_proj_b",), (d, hv), ("embed", "linear_heads"),
            la + "in_proj_b.weight", "linear", "normal"),
      layer(LINEAR, ("in_proj_a",), (d, hv), ("embed", "linear_heads"),
            la + "in_proj_a.weight", "linear", "normal"),
      layer(LINEAR, ("conv1d",), (c.linear_conv_kernel_dim, c.linear_conv_dim),
            ("conv_kernel", "linear_qkv"), la + "conv1d.weight", "conv", "conv"),
      layer(LINEAR, ("A_log",), (hv,), ("linear_heads",), la + "A_log", "same", "a_log"),
      layer(LINEAR, ("dt_bias",), (hv,), ("linear_heads",), la + "dt_bias", "same", "ones"),
      layer(LINEAR, ("norm",), (c.linear_value_head_dim,), ("head_dim",), la + "norm.weight",
            "same", "ones"),
      layer(LINEAR, ("out_proj",), (c.linear_value_dim, d), ("linear_v", "embed"),
            la + "out_proj.weight", "linear", "normal"),
  ]
  sa = "self_attn."
  q_out = 2 * c.num_attention_heads * c.head_dim  # query and output gate, interleaved per head
  kv_out = c.num_key_value_heads * c.head_dim
  attn = [("q_proj", (d, q_out), ("embed", "q_heads")),
          ("k_proj", (d, kv_out), ("embed", "kv_heads")),
          ("v_proj", (d, kv_out), ("embed", "kv_heads")),
          ("o_proj", (c.num_attention_heads * c.head_dim, d), ("heads", "embed"))]
  for name, shape, axes in attn:
    specs.append(layer(FULL, (name,), shape, axes, sa + name + ".weight", "linear", "normal"))
    if c.attention_bias:
      specs.append(layer(FULL, (name + "_bias",), shape[1:], axes[1:], sa + name + ".bias",
                         "same", "zeros"))
  specs += [
      layer(FULL, ("q_norm",), (c.head_dim,), ("head_dim",), sa + "q_norm.weight", "same",
            "zeros"),
      layer(FULL, ("k_norm",), (c.head_dim,), ("head_dim",), sa + "k_norm.weight", "same",
            "zeros"),
  ]
  return specs


def logical_axes(config: Qwen3_5Config) -> dict:
  """Pytree like params whose leaves are tuples of logical axis names."""
  return traverse_util.unflatten_dict({s.path: s.stacked_axes() for s in param_specs(config)})


def shardings(config: Qwen3_5Config, mesh, rules=None) -> dict:
  """Pytree like params of the NamedSharding each parameter gets on `mesh`: what
  `load_hf_checkpoint` places and what jitted functions declare as their in_shardings."""
  return table_shardings(param_specs(config), config, mesh, rules)


def table_shardings(specs, config, mesh, rules=None) -> dict:
  """`shardings` of any parameter table (`config` holds its layer_types)."""
  return traverse_util.unflatten_dict({
      s.path: jax.sharding.NamedSharding(
          mesh, sharding_lib.logical_to_spec(s.stacked_axes(), s.stacked_shape(config), mesh,
                                             rules))
      for s in specs})


def shapes(config: Qwen3_5Config, dtype=jnp.float32) -> dict:
  """Pytree like params of their jax.ShapeDtypeStruct: what restoring or sizing needs,
  without initialising anything."""
  return traverse_util.unflatten_dict({s.path: jax.ShapeDtypeStruct(s.stacked_shape(config), dtype)
                                       for s in param_specs(config)})


def count(config: Qwen3_5Config) -> int:
  """Number of text-model parameters (embeddings counted once when tied)."""
  return sum(math.prod(s.stacked_shape(config)) for s in param_specs(config))


def _init_one(spec: ParamSpec, shape, key, dtype, std):
  if spec.init == "normal":
    return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
  if spec.init == "zeros":
    return jnp.zeros(shape, dtype)
  if spec.init == "ones":
    return jnp.ones(shape, dtype)
  if spec.init == "a_log":  # A ~ U(0.01, 16), as transformers initialises it
    return jnp.log(jax.random.uniform(key, shape, jnp.float32, 0.01, 16.0)).astype(dtype)
  if spec.init == "conv":  # torch Conv1d default: U(-1/sqrt(K), 1/sqrt(K)) for depthwise
    bound = 1.0 / np.sqrt(spec.shape[0])
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)
  raise ValueError(f"unknown init {spec.init!r} for {spec.path}")


def init(config: Qwen3_5Config, key: jax.Array, dtype=jnp.float32, std: float = 0.02) -> dict:
  """Random parameters with transformers' initialisation (for from-scratch runs and tests)."""
  return init_table(param_specs(config), config, key, dtype, std)


def init_table(specs, config, key: jax.Array, dtype=jnp.float32, std: float = 0.02) -> dict:
  """`init` of any parameter table (`config` holds its layer_types): the vision tower's too."""
  keys = jax.random.split(key, len(specs))
  return traverse_util.unflatten_dict({s.path: _init_one(s, s.stacked_shape(config), k, dtype, std)
                                       for s, k in zip(specs, keys)})
