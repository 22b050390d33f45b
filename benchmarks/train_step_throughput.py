"""The GRPO train step against TRL's `GRPOTrainer` loss + backward, side by side.

Both score the same rollout batch with the same random Qwen3.5 (built by transformers,
loaded into JAX from its safetensors): `--questions` groups of `--group` completions, a
`--prompt`-token prompt and up to `--completion` completion tokens (lengths vary, right
padding), rewards 0/1 at random. TRL runs `GRPOTrainer._compute_loss` (loss_type "bnpo":
token mean over the batch, like our "token_mean"; beta 0; its per-token log-probs and
entropies) then `backward()`. Ours runs the whole jitted `train_step`: the same loss and its
gradient plus the AdamW update, so the comparison is conservative for JAX. Reports step
time, tokens/s (prompt + completion tokens of the batch per second) and their ratio, and
the loss of both (equal up to float32 rounding: a check that the two compute the same
thing).

    python benchmarks/train_step_throughput.py --out benchmarks/train_step_cpu.json
    python benchmarks/train_step_throughput.py --model 0.8b --dtype bfloat16 --no_peer  # GPU/TPU

Needs `pip install -r benchmarks/requirements.txt` (TRL) for the peer.
"""

from __future__ import annotations

import os
import sys
import tempfile

import jax
import numpy as np
from common import MODELS, arguments, bench_model, best_time, write_result

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from zppo_jax import run_config, sharding  # noqa: E402
from zppo_jax.rl import losses  # noqa: E402
from zppo_jax import train_step as ts  # noqa: E402
from zppo_jax.models import qwen3_5  # noqa: E402


def rollout_batch(vocab, questions, group, prompt, completion, seed=0):
  """Token ids, masks and group advantages of a random rollout batch (numpy)."""
  rng = np.random.default_rng(seed)
  rows, length = questions * group, prompt + completion
  tokens = rng.integers(0, vocab, (rows, length)).astype(np.int32)
  ends = prompt + rng.integers(completion // 4, completion + 1, rows)
  positions = np.arange(length)[None]
  attention = (positions < ends[:, None]).astype(np.int32)
  loss_mask = ((positions >= prompt) & (positions < ends[:, None])).astype(np.float32)
  rewards = rng.integers(0, 2, (questions, group)).astype(np.float32)
  advantages = np.asarray(losses.group_advantages(rewards)).reshape(-1)
  return dict(tokens=tokens, attention_mask=attention, loss_mask=loss_mask,
              advantages=advantages)


def trl_step(model, batch, prompt, completion, group):
  """A closure running TRL's GRPO loss and backward on `batch`, and its loss value."""
  import datasets
  import torch
  import transformers
  from trl import GRPOConfig, GRPOTrainer

  from zppo_jax import tiny_tokenizer
  # TRL wants a tokenizer; the loss never uses it
  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_file=os.path.join(tiny_tokenizer.DEFAULT_DIR, "tokenizer.json"),
      pad_token="<|endoftext|>", eos_token="<|im_end|>")
  args = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=group,
                    num_generations=group, max_completion_length=completion, beta=0.0,
                    loss_type="bnpo", report_to=[], use_cpu=True, bf16=False)
  trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **_: [0.0] * len(
      completions), args=args, train_dataset=datasets.Dataset.from_dict({"prompt": ["x"]}),
      processing_class=tokenizer)
  trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train() otherwise
  t = {k: torch.from_numpy(np.array(v)) for k, v in batch.items()}
  inputs = {"prompt_ids": t["tokens"][:, :prompt].long(),
            "prompt_mask": t["attention_mask"][:, :prompt].long(),
            "completion_ids": t["tokens"][:, prompt:].long(),
            "completion_mask": t["loss_mask"][:, prompt:].long(),
            "advantages": t["advantages"].float()}
  model.train()

  def step():
    model.zero_grad(set_to_none=True)
    loss = trainer._compute_loss(model, inputs)
    loss.backward()
    return float(loss)
  return step


def main():
  parser = arguments(__doc__, peer="TRL")
  parser.add_argument("--questions", type=int, default=2)
  parser.add_argument("--group", type=int, default=8)
  parser.add_argument("--prompt", type=int, default=128)
  parser.add_argument("--completion", type=int, default=384)
  parser.add_argument("--remat", default="none")
  args = parser.parse_args()

  if args.model in MODELS:
    model, config, params = bench_model(args.model)
  else:
    from zppo_jax.models.qwen3_5 import presets as sizes
    model = None
    config = qwen3_5.from_hf_dict(sizes.hf_config(args.model))
    params = qwen3_5.init_params(config, jax.random.key(0))
  batch = rollout_batch(config.vocab_size, args.questions, args.group, args.prompt,
                        args.completion)
  rows, length = batch["tokens"].shape
  tokens = rows * length

  cfg = run_config.train_config()
  cfg.update(compute_dtype=args.dtype, remat=args.remat)
  cfg.loss.correction = "none"
  mesh = sharding.make_mesh()
  optimizer = ts.make_optimizer(cfg.optimizer)
  shardings = ts.state_shardings(config, optimizer, mesh)
  step = ts.TrainStep(config, optimizer, cfg, mesh, shardings)
  state = {"s": ts.init_state(jax.device_put(params, shardings.params), optimizer, 0,
                              shardings)}
  chunk = ts.shard_batch(ts.weigh_rows([batch], cfg.loss)[0], mesh)  # the batch as one chunk
  losses_seen = []

  def jax_step():
    state["s"], metrics = step(state["s"], [chunk])
    losses_seen.append(float(metrics["loss"]))  # blocks until the step is done

  jax_time = best_time(jax_step, args.repeats)
  result = dict(model=args.model, params=qwen3_5.param_count(config), rows=rows,
                length=length, jax_dtype=args.dtype, remat=args.remat,
                device=str(jax.devices()[0].device_kind), jax_step_s=jax_time,
                jax_tokens_per_s=tokens / jax_time, jax_loss_first_step=losses_seen[0])
  if not args.no_peer and model is not None:
    import torch
    torch.set_num_threads(os.cpu_count())
    trl = trl_step(model, batch, args.prompt, args.completion, args.group)
    peer_loss = trl()
    trl_time = best_time(trl, args.repeats, warm_up=False)
    result.update(trl_step_s=trl_time, trl_tokens_per_s=tokens / trl_time,
                  trl_loss=peer_loss, jax_over_trl=trl_time / jax_time)
  write_result(result, args.out)


if __name__ == "__main__":
  main()
