"""How the tiny vision-language student and teacher in zppo_jax/assets were made: the tiny
text models grown into VLMs (`zppo_jax.tiny_vlm`: vision tokens, a random tower), then
off-policy distillation (SFT) on the drawn arithmetic task (`data.visual`), tower frozen;
half of the rows only ask what the image shows, so that reading is learned apart from the
arithmetic the text models already do; a quarter of the student's other rows show candidate
solutions beside the image (as BCQ/NCQ prompts will), in formats that are not ZPPO's.

    python -m zppo_jax.tiny_vlm --out /tmp/tiny_vlm_grown
    python -m zppo_jax.train --config configs/tiny_vlm_sft.py:student --workdir /tmp/vlm_sft_s
    python -m zppo_jax.train --config configs/tiny_vlm_sft.py:teacher --workdir /tmp/vlm_sft_t

Each run exports into zppo_jax/assets/tiny_vlm_<role>. Both learn to read the image (the
solutions first say what it shows); the student, as in tiny_sft.py, sees mostly short
operands and both solution styles, so it keeps a spread of accuracies for RL.
"""

import os

from zppo_jax import run_config

GROWN = "/tmp/tiny_vlm_grown"
STEPS = {"student": 1000, "teacher": 800}
LEVELS = {"student": (0.5, 0.35, 0.15), "teacher": (0.3, 0.3, 0.25, 0.15)}


def get_config(role="student"):
  if role not in STEPS:
    raise ValueError(f"tiny_vlm_sft.py takes :student or :teacher, got {role!r}")
  c = run_config.method_config("off_policy_distill")
  c.name = f"tiny-vlm-sft-{role}"
  c.student.path = os.path.join(GROWN, role)
  # the random tower stays frozen: trained along at this size it collapses to one vector for
  # every glyph (the language model learns to read its fixed, distinct features instead)
  c.vision.update(enabled=True, train_tower=False)
  c.teacher.source = "dataset"
  c.data.update(source="synthetic:visual", level_weights=LEVELS[role],
                styles=("worked", "direct") if role == "student" else ("worked",),
                read_fraction=0.5,   # half the rows only ask what the image shows
                review_fraction=0.25 if role == "student" else 0.0)
  c.distill.student_rollouts = False
  c.questions_per_step = 32
  c.total_steps = STEPS[role]
  c.train.optimizer.update(learning_rate=1e-3, schedule="cosine", warmup_steps=20,
                           total_steps=STEPS[role], weight_decay=0.01)
  # review rows hold up to three candidates: ~300 tokens of prompt (tiny_sft.py)
  c.rollout.max_prompt_tokens = 512 if role == "student" else 64
  c.train.update(chunk_rows=16, length_bucket=128, delta_chunk_size=32)  # CPU (tiny.py)
  c.eval.update(benchmarks=("visual=synthetic:visual_heldout;limit=64",), every=250, k=2)
  c.checkpoint.every = 250
  c.log.samples_every = 0
  c.export.dir = f"{run_config.TINY_DIR}/tiny_vlm_{role}"
  return c
