"""Shared pieces of the benchmark scripts: the benchmark model and a timer."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from zppo_jax.models import qwen3_5  # noqa: E402

# Random Qwen3.5 models that keep the real layer pattern (3 Gated DeltaNet : 1 full).
MODELS = {
    # 8.9M parameters: big enough that the arithmetic and the delta-rule state traffic, not
    # the framework, dominate a CPU step.
    "small": dict(
        vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, linear_conv_kernel_dim=4,
        linear_key_head_dim=64, linear_value_head_dim=64, linear_num_key_heads=2,
        linear_num_value_heads=4, tie_word_embeddings=False),
    # 0.2M parameters, the scale of the test suite's models: per-step overhead dominates.
    "tiny": dict(
        vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, linear_conv_kernel_dim=4,
        linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
        linear_num_value_heads=4, tie_word_embeddings=False),
}
BENCH_CONFIG = MODELS["small"]


def bench_model(name="small", **overrides):
  """(transformers model, JAX config, JAX params): the same random weights in both, loaded
  into JAX from the safetensors transformers writes."""
  import torch
  import transformers
  torch.manual_seed(0)
  cfg = transformers.Qwen3_5TextConfig(**{**MODELS[name], **overrides})
  model = transformers.Qwen3_5ForCausalLM(cfg).eval()
  with tempfile.TemporaryDirectory() as tmp:
    model.save_pretrained(tmp)
    config, params = qwen3_5.load_hf_checkpoint(tmp)
  return model, config, params


def best_time(fn, repeats, warm_up=True):
  """Best wall time of `repeats` calls, after one warm-up call (JAX compiles there)."""
  if warm_up:
    fn()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def arguments(doc: str, peer: str, repeats: int = 3):
  """An argument parser with the options every benchmark shares."""
  import argparse
  parser = argparse.ArgumentParser(description=doc)
  parser.add_argument("--model", default="small", help="'tiny' or 'small' (benchmarks/common.py) "
                      "or a Qwen3.5 size from zppo_jax/models/qwen3_5/presets.py, with random weights")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--repeats", type=int, default=repeats)
  parser.add_argument("--no_peer", action="store_true", help=f"skip {peer}")
  parser.add_argument("--out", default=None)
  return parser


def write_result(result: dict, out: str | None):
  """Prints the result as JSON, and writes it to `out` when given."""
  print(json.dumps(result, indent=2))
  if out:
    with open(out, "w") as f:
      json.dump(result, f, indent=2)
