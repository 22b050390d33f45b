"""Shared fixtures: tiny random Qwen3.5 checkpoints written by `transformers` itself."""

import gc
import os
import shutil
import tempfile

# Eight host CPU devices so sharded loading, sampling and training run on real meshes (the
# train step on (8,1,1), (2,4,1) and (1,4,2)); set before jax starts.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The TPU runtime (libtpu, for zppo_jax.aot's test) is installed but there is no TPU: JAX runs
# on the CPU; the TPU compiler still answers for a topology (`jax.experimental.topologies`).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session, shared with the trainer subprocesses: a
# program compiled once (same shapes, same mesh) is not compiled again by the next Trainer.
_CACHE = tempfile.mkdtemp(prefix="zppo-jax-cache-")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402
import safetensors.torch  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from zppo_jax import sampler  # noqa: E402

transformers.logging.set_verbosity_error()

# Small shapes that still exercise every code path: GQA in both attention kinds, partial
# RoPE, several layer_types patterns (periodic and not), tied and untied embeddings, biases.
TINY = {
    "periodic": dict(
        vocab_size=131, hidden_size=64, intermediate_size=96, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, linear_conv_kernel_dim=4,
        linear_key_head_dim=8, linear_value_head_dim=12, linear_num_key_heads=2,
        linear_num_value_heads=4, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "partial_rotary_factor": 0.25}),
    "tied_bias": dict(
        vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=4,
        num_attention_heads=3, num_key_value_heads=3, head_dim=32, linear_conv_kernel_dim=3,
        linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
        linear_num_value_heads=2, tie_word_embeddings=True, attention_bias=True,
        layer_types=["full_attention", "linear_attention"] * 2,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                         "partial_rotary_factor": 0.5}),
    "irregular": dict(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=5,
        num_attention_heads=4, num_key_value_heads=1, head_dim=8, linear_conv_kernel_dim=4,
        linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=1,
        linear_num_value_heads=3, tie_word_embeddings=False,
        layer_types=["linear_attention", "full_attention", "linear_attention",
                     "linear_attention", "full_attention"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "partial_rotary_factor": 1.0}),
}


def _perturb(model):
  """Non-trivial norms and biases, and weights large enough that logits differ visibly."""
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or name.endswith("bias") or "dt_bias" in name:
        p.add_(0.3 * torch.randn(p.shape, generator=gen))
  return model


def make_text_model(kind: str, **overrides):
  torch.manual_seed(0)
  cfg = transformers.Qwen3_5TextConfig(initializer_range=0.08, **{**TINY[kind], **overrides})
  return _perturb(transformers.Qwen3_5ForCausalLM(cfg).eval())


def make_multimodal_model():
  torch.manual_seed(0)
  text = dict(TINY["periodic"], initializer_range=0.08)
  vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=64,
                patch_size=4, temporal_patch_size=2, spatial_merge_size=2)
  cfg = transformers.Qwen3_5Config(text_config=text, vision_config=vision,
                                   tie_word_embeddings=False)
  return _perturb(transformers.Qwen3_5ForConditionalGeneration(cfg).eval())


@pytest.fixture(scope="session", params=sorted(TINY))
def hf_text(request, tmp_path_factory):
  """(transformers model, checkpoint dir) for each tiny text-only config."""
  model = make_text_model(request.param)
  path = tmp_path_factory.mktemp(f"hf_{request.param}")
  model.save_pretrained(path)
  return model, str(path)


@pytest.fixture(scope="session")
def hf_multimodal(tmp_path_factory):
  """(transformers Qwen3_5ForConditionalGeneration, dir) in the official repo layout."""
  model = make_multimodal_model()
  path = tmp_path_factory.mktemp("hf_multimodal")
  model.save_pretrained(path)
  # Official repos also carry a multi-token-prediction head that the text model must skip.
  weights = safetensors.torch.load_file(path / "model.safetensors")
  weights["mtp.fc.weight"] = torch.randn(64, 128)
  safetensors.torch.save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
  (path / "tokenizer_config.json").write_text('{"model_max_length": 64}')
  return model, str(path)


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
  """Frees each module's compiled programs when it ends. XLA:CPU maps every executable's
  code in pages of its own, and the suite's few thousand compiles, all kept alive by JAX's
  caches, reached the kernel's 65530-map limit (vm.max_map_count) late in the run, where
  the next compile's mmap failed and the process died (segfault or abort)."""
  yield
  sampler._shared_sampler.cache_clear()
  jax.clear_caches()
  gc.collect()


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  shutil.rmtree(_CACHE, ignore_errors=True)
