"""One loader for every policy a run holds: the student, the teacher, the frozen reference,
or what `zppo_jax.evaluate --checkpoint` names.

A policy comes from a Hugging Face checkpoint directory (config.json + safetensors), from
random init of an architecture (`init="random"`, HF config fields in `architecture`: how the
tiny models are made), or from a run's orbax checkpoint (its workdir or checkpoint
directory). Its model family is `config.model.family`.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp

from zppo_jax import checkpointing, models
from zppo_jax.data.tokenizer import Tokenizer
from zppo_jax.sampler import Sampler

INITS = ("checkpoint", "random")


def architecture(family: str, policy_cfg, what: str = "student"):
  """The model config of a policy slice (`config.student`): its checkpoint's config.json, or
  with `init="random"` the HF fields of `architecture`."""
  model = models.get(family)
  if policy_cfg.get("init", "checkpoint") == "random":
    return model.from_hf_dict(policy_cfg.architecture.to_dict(),
                              source=f"config.{what}.architecture")
  return model.load_config(policy_cfg.path)


def load(family: str, policy_cfg, mesh, rules=None, *, seed: int = 0, checkpoint: str = "",
         what: str = "student"):
  """(model config, params placed on `mesh`) of a policy slice (`config.student` or
  `config.teacher`: path, dtype[, init, architecture]), placed by the logical-axis `rules`;
  `checkpoint`, when given, is a HF directory or a run's workdir whose newest checkpoint
  holds the params instead."""
  model, dtype = models.get(family), jnp.dtype(policy_cfg.dtype)
  if checkpoint:
    if not os.path.isdir(checkpoint):
      raise FileNotFoundError(f"--checkpoint {checkpoint}: no such directory")
    if os.path.isfile(os.path.join(checkpoint, "config.json")):
      return model.load_hf_checkpoint(checkpoint, dtype, mesh=mesh, rules=rules)
    directory = os.path.join(checkpoint, "checkpoints")
    directory = directory if os.path.isdir(directory) else checkpoint
    model_config = architecture(family, policy_cfg, what)
    abstract = checkpointing.abstract(model.param_shapes(model_config, dtype),
                                      model.param_shardings(model_config, mesh, rules))
    found = checkpointing.restore_latest_params(directory, abstract)
    if found is None:
      raise FileNotFoundError(f"--checkpoint {checkpoint}: neither a Hugging Face checkpoint "
                              f"(config.json) nor a directory with orbax checkpoints")
    return model_config, found[1]
  init = policy_cfg.get("init", "checkpoint")
  if init not in INITS:
    raise ValueError(f"config.{what}.init must be one of {INITS}, got {init!r}")
  if init == "random":
    model_config = architecture(family, policy_cfg, what)
    params = jax.jit(lambda: model.init_params(model_config, jax.random.key(seed), dtype),
                     out_shardings=model.param_shardings(model_config, mesh, rules))()
    return model_config, params
  return model.load_hf_checkpoint(policy_cfg.path, dtype, mesh=mesh, rules=rules)


@dataclasses.dataclass
class Policies:
  """The run's policies: the student's tokenizer, config and sampler; the teacher model when
  it is sampled or scored in-process; the frozen starting student (`reference`) when the
  loss or a diagnostic scores against it."""
  tokenizer: Tokenizer
  config: object
  sampler: Sampler
  teacher_config: object | None = None
  teacher_params: dict | None = None
  teacher_sampler: Sampler | None = None
  ref_params: dict | None = None


def load_all(config, mesh, rules, student_config, student_params) -> Policies:
  """The teacher (`teacher.source="model"`) and reference beside a loaded student."""
  tokenizer = Tokenizer.load(config.tokenizer or config.student.path)
  if tokenizer.vocab_size > student_config.vocab_size:
    raise ValueError(f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens, more than "
                     f"the student's vocab_size {student_config.vocab_size}")
  out = Policies(tokenizer, student_config, Sampler(student_config, mesh=mesh, rules=rules))
  if config.teacher.source == "model":
    t_config, t_params = load(config.model.family, config.teacher, mesh, rules, what="teacher")
    if t_config.vocab_size != student_config.vocab_size:
      raise ValueError(f"teacher {config.teacher.path} has vocab_size {t_config.vocab_size}, the "
                       f"student {student_config.vocab_size}: they must share a tokenizer")
    out.teacher_config, out.teacher_params = t_config, t_params
    out.teacher_sampler = Sampler(t_config, mesh=mesh, rules=rules)
  if config.train.loss.beta or config.log.kl_to_start:
    out.ref_params = student_params  # the frozen starting policy (never donated)
  return out
