"""Shapes of the official Qwen3.5 dense models, as in their Hugging Face config.json.

    hf_config("0.8b") -> the repository's config.json as a dict (model_type "qwen3_5")
    config("0.8b")    -> its Qwen3_5Config

Sources: Qwen/Qwen3.5-0.8B config.json verbatim; the 2B and 9B files' text_config heads
verbatim with the rest from NVIDIA Megatron-LM's per-size table and the model cards; 4B from
independent copies that agree with each other; 27B's text_config from the Qwen3.5-27B-FP8
config.json. Every size shares vocab 248320, head_dim 256, 16 linear key heads of dim 128,
conv kernel 4, a full-attention layer every 4th layer, and M-RoPE theta 1e7 on 25% of the
head dims.
"""

from zppo_jax.models.qwen3_5.config import Qwen3_5Config, from_hf_dict

# size: (hidden, intermediate, layers, heads, kv_heads, linear value heads, tied embeddings,
#        vision (depth, hidden, intermediate, heads, out_hidden))
SIZES = {
    "0.8b": (1024, 3584, 24, 8, 2, 16, True, (12, 768, 3072, 12, 1024)),
    "2b": (2048, 6144, 24, 8, 2, 16, True, (24, 1024, 4096, 16, 2048)),
    "4b": (2560, 9216, 32, 16, 4, 32, True, (24, 1024, 4096, 16, 2560)),
    "9b": (4096, 12288, 32, 16, 4, 32, False, (27, 1152, 4304, 16, 4096)),
    "27b": (5120, 17408, 64, 24, 4, 48, False, (27, 1152, 4304, 16, 5120)),
}
REPOS = {size: f"Qwen/Qwen3.5-{size.upper()}" for size in SIZES}


def hf_config(size: str) -> dict:
  """The config.json dict of Qwen/Qwen3.5-<size>."""
  if size not in SIZES:
    raise ValueError(f"unknown Qwen3.5 size {size!r}; choose one of {sorted(SIZES)}")
  hidden, inter, layers, heads, kv_heads, lin_v_heads, tied, vision = SIZES[size]
  v_depth, v_hidden, v_inter, v_heads, v_out = vision
  interval = 4
  return {
      "architectures": ["Qwen3_5ForConditionalGeneration"],
      "model_type": "qwen3_5",
      "image_token_id": 248056,
      "video_token_id": 248057,
      "vision_start_token_id": 248053,
      "vision_end_token_id": 248054,
      "tie_word_embeddings": tied,
      "text_config": {
          "model_type": "qwen3_5_text",
          "attention_bias": False,
          "attention_dropout": 0.0,
          "attn_output_gate": True,
          "dtype": "bfloat16",
          "eos_token_id": 248044,
          "full_attention_interval": interval,
          "head_dim": 256,
          "hidden_act": "silu",
          "hidden_size": hidden,
          "initializer_range": 0.02,
          "intermediate_size": inter,
          "layer_types": ["linear_attention" if (i + 1) % interval else "full_attention"
                          for i in range(layers)],
          "linear_conv_kernel_dim": 4,
          "linear_key_head_dim": 128,
          "linear_num_key_heads": 16,
          "linear_num_value_heads": lin_v_heads,
          "linear_value_head_dim": 128,
          "max_position_embeddings": 262144,
          "mtp_num_hidden_layers": 1,
          "num_attention_heads": heads,
          "num_hidden_layers": layers,
          "num_key_value_heads": kv_heads,
          "rms_norm_eps": 1e-06,
          "tie_word_embeddings": tied,
          "vocab_size": 248320,
          "rope_parameters": {
              "mrope_interleaved": True,
              "mrope_section": [11, 11, 10],
              "rope_type": "default",
              "rope_theta": 10000000,
              "partial_rotary_factor": 0.25,
          },
      },
      "vision_config": {
          "model_type": "qwen3_5",
          "depth": v_depth,
          "hidden_act": "gelu_pytorch_tanh",
          "hidden_size": v_hidden,
          "in_channels": 3,
          "initializer_range": 0.02,
          "intermediate_size": v_inter,
          "num_heads": v_heads,
          "num_position_embeddings": 2304,
          "out_hidden_size": v_out,
          "patch_size": 16,
          "spatial_merge_size": 2,
          "temporal_patch_size": 2,
      },
  }


def config(size: str) -> Qwen3_5Config:
  """The model config of Qwen/Qwen3.5-<size> (text decoder)."""
  return from_hf_dict(hf_config(size), source=REPOS.get(size, size))
