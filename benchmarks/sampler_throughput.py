"""Decode throughput of the JAX sampler against transformers `generate`, side by side.

Both generate greedily from the same random model (built by transformers, loaded into JAX
from its safetensors) on the same batch, with no stop token so every row makes exactly
`--new` tokens. Reports generated tokens/s of each and their ratio, the JAX time split into
prefill and decode (a call with max_new_tokens=1 is the prefill plus one sample), sampled
generation (temperature 1, top-p 0.95) next to greedy, and the fraction of this machine's
measured matmul FLOP/s that the JAX decode reaches.

    python benchmarks/sampler_throughput.py --out benchmarks/sampler_cpu.json
    python benchmarks/sampler_throughput.py --model 0.8b --dtype bfloat16 --no_peer  # GPU/TPU
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from common import MODELS, arguments, bench_model, best_time, write_result

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from zppo_jax import sampler  # noqa: E402
from zppo_jax.models import qwen3_5  # noqa: E402


def matmul_flops_per_s(dtype, size=2048, repeats=5):
  """This machine's dense matmul rate: the yardstick for the utilisation figure."""
  a = jnp.ones((size, size), dtype)
  mm = jax.jit(lambda a: a @ a)
  return 2 * size ** 3 / best_time(lambda: mm(a).block_until_ready(), repeats)


def flops_per_token(config, context):
  """Model FLOPs of one token attending to `context` earlier tokens: 2 per weight of every
  matmul (lm_head included, the embedding gather excluded), plus attention scores and sums
  over the context, plus the delta-rule state update (~7 d_k d_v per value head)."""
  c = config
  matmul = qwen3_5.param_count(config) - c.vocab_size * c.hidden_size * (
      1 if c.tie_word_embeddings else 0)
  attention = 4 * c.num_full_layers * c.num_attention_heads * c.head_dim * context
  delta = 7 * c.num_linear_layers * c.linear_num_value_heads * (
      c.linear_key_head_dim * c.linear_value_head_dim)
  return 2 * matmul + attention + delta


def main():
  parser = arguments(__doc__, peer="transformers")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--prompt", type=int, default=64)
  parser.add_argument("--new", type=int, default=128)
  args = parser.parse_args()
  dtype = jnp.dtype(args.dtype)

  if args.model in MODELS:
    model, config, params = bench_model(args.model)
    params = jax.tree.map(lambda x: x.astype(dtype), params)
  else:
    from zppo_jax.models.qwen3_5 import presets as sizes
    config = qwen3_5.from_hf_dict(sizes.hf_config(args.model))
    params = qwen3_5.init_params(config, jax.random.key(0), dtype=dtype)
    model = None
    if not args.no_peer:
      import torch
      import transformers
      model = transformers.Qwen3_5ForCausalLM(
          transformers.Qwen3_5TextConfig(**sizes.hf_config(args.model))).eval()
  prompts = np.random.RandomState(0).randint(0, config.vocab_size,
                                             (args.batch, args.prompt)).tolist()
  smp = sampler.Sampler(config)

  def jax_generate(new, **kwargs):
    return lambda: smp.generate(params, prompts, max_new_tokens=new, **kwargs)

  t_greedy = best_time(jax_generate(args.new, temperature=0.0), args.repeats)
  t_prefill = best_time(jax_generate(1, temperature=0.0), args.repeats)
  t_sampled = best_time(jax_generate(args.new, temperature=1.0, top_p=0.95), args.repeats)
  tokens = args.batch * args.new
  t_decode = t_greedy - t_prefill
  context = args.prompt + args.new / 2  # mean context of a decode step
  decode_flops = args.batch * (args.new - 1) * flops_per_token(config, context)
  peak = matmul_flops_per_s(dtype)
  result = dict(
      device=str(jax.devices()[0]), model=args.model, dtype=args.dtype, batch=args.batch,
      prompt=args.prompt, new=args.new, params=qwen3_5.param_count(config),
      jax_tok_s=tokens / t_greedy, jax_sampled_tok_s=tokens / t_sampled,
      jax_prefill_s=t_prefill, jax_decode_s=t_decode,
      jax_decode_tok_s=args.batch * (args.new - 1) / t_decode,
      matmul_flops_per_s=peak, decode_flops_per_s=decode_flops / t_decode,
      decode_utilisation=decode_flops / t_decode / peak, compiles=smp.compile_count)
  if model is not None:
    import torch
    ids = torch.tensor(prompts)
    def hf_generate():
      with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new,
                             min_new_tokens=args.new, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
      assert out.shape[1] == args.prompt + args.new
      return out
    reference = hf_generate()  # the warm-up run, kept to compare tokens
    t_hf = best_time(hf_generate, max(1, args.repeats - 1), warm_up=False)
    ours = smp.generate(params, prompts, max_new_tokens=args.new, temperature=0.0).tokens
    same = np.mean(np.array(ours) == reference[:, args.prompt:].numpy())
    result.update(hf_tok_s=tokens / t_hf, speedup=t_hf / t_greedy,
                  torch_threads=torch.get_num_threads(), greedy_tokens_equal=float(same))
  write_result(result, args.out)


if __name__ == "__main__":
  main()
