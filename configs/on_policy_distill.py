"""On-policy distillation: reverse KL to the teacher on the student's samples (':buffer' for the † variant).

    python -m zppo_jax.train --config configs/on_policy_distill.py[:size=0.8b,mesh=tpu_v5p] --workdir DIR

Without options it runs on the tiny built-in models; see run_config.method_config for the
options (size, mesh, root, buffer, ablations).
"""

from zppo_jax import run_config


def get_config(arg=None):
  return run_config.method_config("on_policy_distill", arg)
