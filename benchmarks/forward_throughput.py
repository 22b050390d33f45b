"""Forward throughput of the jitted JAX Qwen3.5 against transformers eager, side by side.

Both run the same random model (built by transformers, loaded into JAX from its
safetensors) on the same batch, float32, on whatever devices this machine has (CPU here;
transformers uses torch's CPU kernels and its reference chunked delta rule). Also times the
chunked gated delta rule alone, whose cost per token should stay flat as T grows.

    python benchmarks/forward_throughput.py --lengths 256,1024,4096 --out benchmarks/forward.json
"""

from __future__ import annotations

import argparse
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import torch
from common import BENCH_CONFIG, bench_model, best_time

from zppo_jax.models import qwen3_5
from zppo_jax.models.qwen3_5 import gated_delta


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--lengths", default="256,1024,4096")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--chunk_size", type=int, default=64)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  lengths = [int(x) for x in args.lengths.split(",")]
  model, config, params = bench_model()
  forward = jax.jit(functools.partial(qwen3_5.forward, chunk_size=args.chunk_size),
                    static_argnums=0)
  delta = jax.jit(functools.partial(gated_delta.chunked_gated_delta_rule,
                                    chunk_size=args.chunk_size))

  rows = []
  for length in lengths:
    ids = np.random.RandomState(0).randint(0, config.vocab_size, (args.batch, length))
    ids_jax, ids_torch = jnp.asarray(ids), torch.tensor(ids)
    t_jax = best_time(lambda: forward(config, params, ids_jax).block_until_ready(), args.repeats)
    with torch.no_grad():
      t_hf = best_time(lambda: model(input_ids=ids_torch).logits, args.repeats)
    b, h, d = args.batch, config.linear_num_value_heads, config.linear_value_head_dim
    rng = np.random.RandomState(1)
    qkv = [jnp.asarray(rng.randn(b, length, h, d), jnp.float32) for _ in range(3)]
    g = -jnp.abs(jnp.asarray(rng.randn(b, length, h), jnp.float32))
    beta = jax.nn.sigmoid(jnp.asarray(rng.randn(b, length, h), jnp.float32))
    t_delta = best_time(lambda: delta(*qkv, g, beta)[0].block_until_ready(), args.repeats)
    tokens = args.batch * length
    rows.append(dict(T=length, jax_tok_s=tokens / t_jax, hf_tok_s=tokens / t_hf,
                     speedup=t_hf / t_jax, delta_us_per_token=1e6 * t_delta / tokens))
    print(json.dumps(rows[-1]), flush=True)
  result = dict(device=str(jax.devices()[0]), torch_threads=torch.get_num_threads(),
                batch=args.batch, chunk_size=args.chunk_size, config=BENCH_CONFIG, rows=rows)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
  print("| T | JAX tokens/s | transformers tokens/s | JAX / transformers | delta rule us/token |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['T']} | {r['jax_tok_s']:.0f} | {r['hf_tok_s']:.0f} | {r['speedup']:.2f}x "
          f"| {r['delta_us_per_token']:.1f} |")


if __name__ == "__main__":
  main()
