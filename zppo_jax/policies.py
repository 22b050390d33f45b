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
from zppo_jax.data import images as images_lib
from zppo_jax.data.images import PromptImages
from zppo_jax.data.tokenizer import IMAGE_PAD, VIDEO_PAD, Tokenizer
from zppo_jax.data.video import VideoSettings
from zppo_jax.rl import methods
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
         what: str = "student", vision: bool = False, trained_tower: bool = False):
  """(model config, params placed on `mesh`) of a policy slice (`config.student` or
  `config.teacher`: path, dtype[, init, architecture]), placed by the logical-axis `rules`;
  `checkpoint`, when given, is a HF directory or a run's workdir whose newest checkpoint
  holds the params instead. With `vision` the params hold the vision tower too
  (params["visual"]): a run's checkpoints hold only what it trains, so a frozen tower comes
  from the policy slice (its checkpoint, or its random init), a trained one
  (`trained_tower`, config.vision.train_tower) from the run's checkpoint."""
  model, dtype = models.get(family), jnp.dtype(policy_cfg.dtype)
  init = policy_cfg.get("init", "checkpoint")
  if init not in INITS:
    raise ValueError(f"config.{what}.init must be one of {INITS}, got {init!r}")

  def tower(model_config):
    if model_config.vision is None:
      source = f"config.{what}.architecture" if init == "random" else policy_cfg.path
      raise ValueError(f"config.vision.enabled, but the {what} ({source}) has no vision_config")
    if init == "random":
      return jax.jit(lambda: model.vision_init(model_config, jax.random.key(seed + 1), dtype),
                     out_shardings=model.vision_shardings(model_config, mesh, rules))()
    return model.load_hf_checkpoint(policy_cfg.path, dtype, mesh=mesh, rules=rules,
                                    vision=True, text=False)[1]["visual"]

  if checkpoint:
    if not os.path.isdir(checkpoint):
      raise FileNotFoundError(f"--checkpoint {checkpoint}: no such directory")
    if os.path.isfile(os.path.join(checkpoint, "config.json")):
      return model.load_hf_checkpoint(checkpoint, dtype, mesh=mesh, rules=rules, vision=vision)
    directory = os.path.join(checkpoint, "checkpoints")
    directory = directory if os.path.isdir(directory) else checkpoint
    model_config = architecture(family, policy_cfg, what)
    shapes = model.param_shapes(model_config, dtype)
    shardings = model.param_shardings(model_config, mesh, rules)
    if vision and trained_tower:
      shapes["visual"] = jax.eval_shape(lambda: model.vision_init(model_config,
                                                                  jax.random.key(0), dtype))
      shardings["visual"] = model.vision_shardings(model_config, mesh, rules)
    found = checkpointing.restore_latest_params(directory,
                                                checkpointing.abstract(shapes, shardings))
    if found is None:
      raise FileNotFoundError(f"--checkpoint {checkpoint}: neither a Hugging Face checkpoint "
                              f"(config.json) nor a directory with orbax checkpoints")
    params = found[1]
    if "visual" in params:
      return model_config, params
  elif init == "random":
    model_config = architecture(family, policy_cfg, what)
    params = jax.jit(lambda: model.init_params(model_config, jax.random.key(seed), dtype),
                     out_shardings=model.param_shardings(model_config, mesh, rules))()
  else:
    model_config, params = model.load_hf_checkpoint(policy_cfg.path, dtype, mesh=mesh,
                                                    rules=rules, vision=vision)
    return model_config, params
  return model_config, ({**params, "visual": tower(model_config)} if vision else params)


@dataclasses.dataclass
class Policies:
  """The run's policies: the student's tokenizer, config and sampler; the teacher model when
  it is sampled or scored in-process; the frozen starting student (`reference`) when the
  loss or a diagnostic scores against it; the image loader of a vision-language run."""
  tokenizer: Tokenizer
  config: object
  sampler: Sampler
  teacher_config: object | None = None
  teacher_params: dict | None = None
  teacher_sampler: Sampler | None = None
  ref_params: dict | None = None
  images: PromptImages | None = None   # questions' images -> prompt inputs (config.vision)


def load_all(config, mesh, rules, student_config, student_params) -> Policies:
  """The teacher (`teacher.source="model"`) and reference beside a loaded student."""
  tokenizer = Tokenizer.load(config.tokenizer or config.student.path)
  if tokenizer.vocab_size > student_config.vocab_size:
    raise ValueError(f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens, more than "
                     f"the student's vocab_size {student_config.vocab_size}")
  out = Policies(tokenizer, student_config, Sampler(student_config, mesh=mesh, rules=rules))
  vision = config.vision.enabled
  if vision:
    out.images = prompt_images(config.vision, config.data.image_root, student_config,
                               config.student.path if config.student.init != "random" else "",
                               tokenizer)
  if config.teacher.source == "model":
    t_config, t_params = load(config.model.family, config.teacher, mesh, rules, what="teacher",
                              vision=vision)
    if vision and t_config.vision.patch_size != student_config.vision.patch_size:
      raise ValueError(f"teacher {config.teacher.path} takes {t_config.vision.patch_size}-pixel "
                       f"patches, the student {student_config.vision.patch_size}: one image "
                       "processor must serve both")
    if t_config.vocab_size != student_config.vocab_size:
      raise ValueError(f"teacher {config.teacher.path} has vocab_size {t_config.vocab_size}, the "
                       f"student {student_config.vocab_size}: they must share a tokenizer")
    out.teacher_sampler = Sampler(t_config, mesh=mesh, rules=rules)
    if methods.get(config.method).teacher != methods.LOGPROBS and mesh is not None:
      # a sampled teacher is kept as its sampler takes its params (moved once, here), a
      # scoring one as the train step's scorer takes them
      text = {k: v for k, v in t_params.items() if k != "visual"}
      t_params = {**t_params, **jax.device_put(text, out.teacher_sampler.param_shardings)}
    out.teacher_config, out.teacher_params = t_config, t_params
  if config.train.loss.beta or config.log.kl_to_start:
    out.ref_params = student_params  # the frozen starting policy (never donated)
  return out


def prompt_images(vision_cfg, image_root: str, model_config, path: str, tokenizer
                  ) -> PromptImages:
  """The image and video loader of `config.vision` for a model: its checkpoint's image and
  video processor settings (or its tower's), image pixel bounds where the config sets them,
  and a tokenizer that spells the vision tokens with the model's ids."""
  bounds = {k: vision_cfg[k] for k in ("min_pixels", "max_pixels") if vision_cfg[k]}
  settings = images_lib.ImageSettings.for_model(model_config.vision, path, **bounds)
  for token, field in ((IMAGE_PAD, "image_token_id"), (VIDEO_PAD, "video_token_id")):
    got, want = tokenizer.backend.token_to_id(token), getattr(model_config, field)
    if got != want:
      raise ValueError(f"tokenizer {tokenizer.name}: {token} is id {got}, but the model's "
                       f"config.json has {field}={want}")
  return PromptImages(settings, image_root, vision_cfg.cache_images,
                      video=VideoSettings.for_model(model_config.vision, path))
