"""The built-in tiny default: the whole ZPPO loop on a 2-core CPU, nothing to download.

    python -m zppo_jax.train --config configs/tiny.py --workdir /tmp/zppo
    python -m zppo_jax.train --config configs/tiny.py:method=grpo_buffer --workdir /tmp/grpo

Student and teacher are the tiny Qwen3.5-architecture checkpoints shipped in
zppo_jax/assets (made by configs/tiny_sft.py from random weights, on the synthetic
arithmetic task); the teacher is sampled in-process, so BCQ (teacher solved, student
mostly wrong), NCQ (teacher could not) and graduation all happen within a few steps.
`method=` picks another method of the paper on the same setup (the comparison of
`zppo_jax.compare`); other options are those of run_config.method_config (buffer, ablations).
Held-out sets (unseen arithmetic, and task families never trained on) are evaluated every
20 steps.
"""

from zppo_jax import run_config


def get_config(arg=None):
  options = [part for part in (arg or "").split(",") if part]
  method = "zppo"
  for part in list(options):
    if part.startswith("method="):
      method = part.partition("=")[2]
      options.remove(part)
  c = run_config.method_config(method, ",".join(options))
  c.name = f"{c.name}-tiny"
  if c.teacher.source != "none":
    c.teacher.source = "model"   # sampled in-process, as at real scale
  c.total_steps = 40
  # GRPO on this testbed gains ~10 pp held-out in 40 steps at 1e-4 and at 2e-4 (no collapse);
  # a constant 2e-4 falls back after step 40 (results/tiny/README.md)
  c.train.optimizer.update(learning_rate=1e-4, schedule="cosine", warmup_steps=5,
                           total_steps=40)
  c.data.level_weights = (0.5, 0.35, 0.15)  # the student's easy-to-hard mix (tiny_sft.py)
  c.questions_per_step = 8
  c.buffer.update(capacity=32, replay_per_step=8)
  # questions take ~30 tokens; a worked 3-digit solution up to 133 (4 digits: 169)
  c.rollout.update(max_new_tokens=160, max_prompt_tokens=64)
  c.teacher.max_new_tokens = 160
  # 336 + the chat template's 10 tokens + 160 new: the longest row fills a 512-token chunk
  c.zppo.update(max_prompt_tokens=336, max_candidate_tokens=144, max_ncq_responses=3)
  c.log.kl_to_start = True   # the drift diagnostic (train/kl_to_start); cheap at this size
  c.eval.update(benchmarks=("heldout=synthetic:heldout;limit=128",
                            "transfer=synthetic:transfer;limit=64"), every=20)
  # CPU settings (benchmarks/RESULTS.md, issue 19): float32 (bfloat16 is emulated on CPU),
  # no rematerialisation, short delta-rule chunks, and small chunks of rows and lengths.
  c.train.update(compute_dtype="float32", remat="none", delta_chunk_size=32, chunk_rows=16,
                 length_bucket=128)
  return c
