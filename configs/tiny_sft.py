"""How the tiny student and teacher checkpoints in zppo_jax/assets were made: off-policy
distillation (SFT) from random weights on the synthetic arithmetic task's worked solutions.

    python -m zppo_jax.train --config configs/tiny_sft.py:student --workdir /tmp/sft_student
    python -m zppo_jax.train --config configs/tiny_sft.py:teacher --workdir /tmp/sft_teacher

Each run exports its model straight into zppo_jax/assets/tiny_<role> (safetensors,
config.json, tokenizer.json). The teacher is wider and trained longer, so it solves
questions the student cannot; the student stops early, with a spread of accuracies.
"""

from zppo_jax import run_config
from zppo_jax import tiny_tokenizer

# HF config.json fields of the two tiny Qwen3.5 text models (3 Gated DeltaNet + 1 attention).
ARCHITECTURES = {
    "student": dict(hidden_size=64, intermediate_size=192, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, linear_num_key_heads=2,
                    linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16),
    "teacher": dict(hidden_size=128, intermediate_size=384, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=32, linear_num_key_heads=4,
                    linear_num_value_heads=8, linear_key_head_dim=16, linear_value_head_dim=16),
}
STEPS = {"student": 800, "teacher": 1200}
# The student sees mostly short operands, the teacher the full range of the tiny default.
LEVELS = {"student": (0.5, 0.35, 0.15), "teacher": (0.3, 0.3, 0.25, 0.15)}


def get_config(role="student"):
  if role not in ARCHITECTURES:
    raise ValueError(f"tiny_sft.py takes :student or :teacher, got {role!r}")
  c = run_config.method_config("off_policy_distill")
  c.name = f"tiny-sft-{role}"
  c.student.init = "random"
  c.student.architecture = dict(
      model_type="qwen3_5_text", vocab_size=tiny_tokenizer.VOCAB_SIZE, num_hidden_layers=4,
      linear_conv_kernel_dim=4, tie_word_embeddings=True, max_position_embeddings=2048,
      **ARCHITECTURES[role])
  c.tokenizer = tiny_tokenizer.DEFAULT_DIR
  c.teacher.source = "dataset"
  c.data.level_weights = LEVELS[role]
  if role == "student":  # both styles, so that it samples both; and reading candidates
    c.data.update(styles=("worked", "direct"), review_fraction=0.25)
  c.distill.student_rollouts = False
  c.questions_per_step = 32
  c.total_steps = STEPS[role]
  c.train.optimizer.update(learning_rate=3e-3, schedule="cosine", warmup_steps=50,
                           total_steps=STEPS[role], weight_decay=0.01)
  # Review rows hold up to three candidates: ~400 tokens of prompt.
  c.rollout.max_prompt_tokens = 512
  c.train.update(chunk_rows=16, length_bucket=128, delta_chunk_size=32)  # CPU (tiny.py)
  c.checkpoint.every = 200
  c.log.samples_every = 0
  c.export.dir = f"{run_config.TINY_DIR}/tiny_{role}"
  return c
