"""GRPO† (GRPO with ZPPO's prompt replay buffer, no reformulation).

    python -m zppo_jax.train --config configs/grpo_buffer.py[:size=0.8b,mesh=tpu_v5p] --workdir DIR

Without options it runs on the tiny built-in models; see run_config.method_config for the
options (size, mesh, root, buffer, ablations).
"""

from zppo_jax import run_config


def get_config(arg=None):
  return run_config.method_config("grpo_buffer", arg)
