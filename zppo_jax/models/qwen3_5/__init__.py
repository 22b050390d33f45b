"""Qwen3.5 text decoder (Gated DeltaNet + gated full attention) with Hugging Face I/O: the
model family "qwen3_5" (its interface: `zppo_jax.models.Family`).

    from zppo_jax.models import qwen3_5
    config, params = qwen3_5.load_hf_checkpoint(path, dtype=jnp.bfloat16, mesh=mesh)
    logits = qwen3_5.forward(config, params, input_ids, attention_mask)
    qwen3_5.save_hf_checkpoint(out_dir, config, params, source=path)
"""

from zppo_jax.models.qwen3_5.checkpoint import CheckpointError, load_hf_checkpoint, save_hf_checkpoint
from zppo_jax.models.qwen3_5.config import ConfigError, Qwen3_5Config, from_hf_dict, to_hf_dict
from zppo_jax.models.qwen3_5.config import load as load_config
from zppo_jax.models.qwen3_5.model import (CACHE_LOGICAL_AXES, REMAT_POLICIES, Cache, apply, forward,
                                          head_name, hidden_states, init_cache,
                                          logits_from_hidden)
from zppo_jax.models.qwen3_5.layers import Layout
from zppo_jax.models.qwen3_5.params import count as param_count
from zppo_jax.models.qwen3_5.params import init as init_params
from zppo_jax.models.qwen3_5.params import logical_axes, param_specs
from zppo_jax.models.qwen3_5.params import shapes as param_shapes
from zppo_jax.models.qwen3_5.params import shardings as param_shardings
from zppo_jax.models.qwen3_5 import activations, presets
from zppo_jax.models.qwen3_5.multimodal import embed as multimodal_embeddings
from zppo_jax.models.qwen3_5.multimodal import inputs as multimodal_inputs
from zppo_jax.models.qwen3_5.multimodal import place as multimodal_place
from zppo_jax.models.qwen3_5.multimodal import vision_tokens as multimodal_vision_tokens
from zppo_jax.models.qwen3_5.multimodal import positions as multimodal_positions
from zppo_jax.models.qwen3_5.multimodal import tower_init as vision_init
from zppo_jax.models.qwen3_5.multimodal import tower_shardings as vision_shardings
from zppo_jax.models.qwen3_5.multimodal import tower_inputs as multimodal_tower_inputs
from zppo_jax.models.qwen3_5.multimodal import tower_tokens as multimodal_tower_tokens
