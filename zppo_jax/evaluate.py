r"""Held-out evaluation of a checkpoint, the command (the library is `zppo_jax.evaluation`).

    python -m zppo_jax.evaluate --config configs/tiny.py --checkpoint <HF dir or workdir> \
        [--output DIR] [--config.eval.k=8] [--config.eval.temperature=0.6]

Each question of each set in `config.eval.benchmarks` (specs of `data.benchmarks`) is asked
`eval.k` times in the chat template, sampled at `eval.temperature`. A set's accuracy is
avg@k (the mean correctness of all k samples: the paper's figure) and pass@j for j in
`eval.pass_at` and k (unbiased estimator from the k samples). Results go to `<output>/eval.json`
(per set and per question) and `<output>/eval.md` (a table). Without `--checkpoint` the
config's student is evaluated (the starting point of a run); a workdir means its newest
checkpoint.
The trainer runs the same `evaluation.Evaluator` every `eval.every` steps.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from zppo_jax import evaluation, policies, run_config


def load_policy(config, checkpoint: str, mesh, rules=None):
  """(model config, params, tokenizer directory) of what `--checkpoint` names: "" = the
  config's student; a Hugging Face directory (config.json + safetensors); or a run's workdir
  (or its checkpoint directory), whose newest orbax checkpoint holds the params."""
  tokenizer_dir = config.tokenizer or config.student.path
  if not checkpoint and config.student.init == "random":
    raise ValueError("config.student.init='random' has no starting checkpoint: pass "
                     "--checkpoint")
  model_config, params = policies.load(config.model.family, config.student, mesh, rules,
                                       checkpoint=checkpoint, vision=config.vision.enabled,
                                       trained_tower=config.vision.train_tower)
  if checkpoint and os.path.isfile(os.path.join(checkpoint, "tokenizer.json")):
    tokenizer_dir = checkpoint
  return model_config, params, tokenizer_dir


def main(argv):
  del argv
  from zppo_jax import multihost, sharding
  from zppo_jax.data.tokenizer import Tokenizer
  from zppo_jax.sampler import Sampler
  multihost.initialize("auto", None, None, None)
  config = _CONFIG.value
  mesh, rules = sharding.from_config(config.mesh)
  model_config, params, tokenizer_dir = load_policy(config, _CHECKPOINT.value, mesh, rules)
  compute = jnp.dtype(config.train.compute_dtype)
  params = jax.tree.map(lambda p: p.astype(compute), params)
  tokenizer = Tokenizer.load(tokenizer_dir)
  images = policies.prompt_images(config.vision, config.data.image_root, model_config,
                                  _CHECKPOINT.value or config.student.path, tokenizer) if (
                                      config.vision.enabled) else None
  evaluator = evaluation.Evaluator.from_config(config, tokenizer,
                                               Sampler(model_config, mesh=mesh, rules=rules),
                                               images)
  results = evaluator.run(params, config.seed)
  output = _OUTPUT.value or os.path.join(_CHECKPOINT.value or ".", "eval")
  title = f"{run_config.label(config)}: {_CHECKPOINT.value or config.student.path}"
  for path in evaluation.write(results, output, config, title=title,
                               extra={"checkpoint": _CHECKPOINT.value or config.student.path,
                                      "method": run_config.label(config), "seed": config.seed}):
    print(path)
  print(evaluation.markdown(results, config.eval.pass_at, title))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file (:arg).")
  _CHECKPOINT = flags.DEFINE_string(
      "checkpoint", "", "A Hugging Face checkpoint directory, or a run's workdir (its newest "
      "checkpoint); empty: the config's student.")
  _OUTPUT = flags.DEFINE_string("output", "", "Where eval.json and eval.md go (default: "
                                "<checkpoint>/eval).")
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=run_config.parse_flags)
