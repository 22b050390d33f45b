r"""Accelerator memory of a run, per device, before renting the machines.

    python -m zppo_jax.memory --config configs/zppo.py:size=2b,mesh=tpu_v5p --devices 64 \
        [--student_size 2b --teacher_size 27b] [--config.mesh.shape='(2,32,1)']

Counts what the trainer keeps on each device, from the model shapes and the config's mesh
and sharding rules (an abstract mesh: no device is needed): the student's master params,
their gradients and the optimizer state, the compute-dtype copy the sampler runs on, the
reference and teacher params (a sampled teacher's, and the sampling copy, laid out as the
sampler takes them); and what lives in one phase of a step at a time: each sampler call's
rollout cache with its prefill's activations (on TPU, `--platform tpu_*`, with the weight
copies XLA makes for a decode loop), a scoring teacher's forward, and the train step's
activations for a chunk of the longest length bucket (the model family's `activations`
count). The peak is the state plus the largest phase. benchmarks/RESULTS.md compares the
counts with XLA's own figures for TPU slices (`python -m zppo_jax.aot`).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from absl import app, flags
from jax.sharding import AbstractMesh
from ml_collections import config_flags

from zppo_jax import learner, models, run_config, sharding
from zppo_jax import train_step as ts
from zppo_jax.rl import methods, stages
from zppo_jax.sampler import Sampler

GIB = 2**30
# the chat template's tokens around a question (the tiny template's count as a bound)
PROMPT_OVERHEAD = 32
# what lives only in one phase of a step, one phase at a time: {part: phases}
STUDENT_CALLS = ("student rollouts", "BCQ/NCQ rollouts")
PHASES = {"rollout cache (original)": "student rollouts",
          "prefill activations (original)": "student rollouts",
          "rollout cache (BCQ/NCQ)": "BCQ/NCQ rollouts",
          "prefill activations (BCQ/NCQ)": "BCQ/NCQ rollouts",
          "teacher rollout cache": "teacher rollouts",
          "teacher prefill activations": "teacher rollouts",
          "relaid-out weights (student decode, TPU)": STUDENT_CALLS,
          "relaid-out weights (teacher decode, TPU)": "teacher rollouts",
          "scoring activations": "scoring",
          "train step activations": "update"}
# HBM per device of the platforms in run_config.MESHES.
HBM_GIB = {"tpu_v5p": 95, "tpu_v6e": 32, "gpu_8xh100": 80}


def abstract_mesh(shape, devices: int) -> AbstractMesh:
  """The config's mesh shape (one -1 filled in) over `devices` devices, without devices."""
  return AbstractMesh(sharding.mesh_shape(shape, devices), sharding.MESH_AXES)


def model_config(family: str, path: str, size: str | None, what: str):
  """From the checkpoint's config.json, or the official shapes of `size` (None: the size a
  path of an official repository not downloaded yet names, e.g. /checkpoints/Qwen3.5-2B)."""
  presets = models.get(family).presets
  named = os.path.basename(os.path.normpath(path)).lower().removeprefix("qwen3.5-")
  if not size and named in presets.SIZES and not os.path.exists(
      os.path.join(path, "config.json")):
    size = named
  if size:
    return presets.config(size)
  if not os.path.exists(os.path.join(path, "config.json")):
    raise FileNotFoundError(f"{path}/config.json not found: give --{what}_size (0.8b, 2b, 4b, "
                            f"9b, 27b) to use the official shapes instead")
  return models.get(family).load_config(path)


def _params(mcfg, dtype, mesh, rules):
  model = models.of(mcfg)
  return sharding.bytes_per_device(model.param_shapes(mcfg, dtype),
                                   model.param_shardings(mcfg, mesh, rules))


def _sampling_params(sampler: Sampler, dtype) -> int:
  """Params in the layout a sampler takes them (`sampler.decode_rules`: split over every
  device, embed whole)."""
  mcfg = sampler.config
  return sharding.bytes_per_device(models.of(mcfg).param_shapes(mcfg, dtype),
                                   sampler.param_shardings)


def _call(sampler: Sampler, prompts: int, prompt_len: int, new: int, samples: int
          ) -> tuple[int, int]:
  """A sampler call's own bytes: (its cache, its prefill's activations on a device's share
  of the prompt rows)."""
  mcfg = sampler.config
  rows, slots, _ = sampler.shapes(prompts, prompt_len, new)
  return (sampler.cache_bytes(prompts, prompt_len, new, samples, jnp.bfloat16),
          models.of(mcfg).activations.prefill(mcfg, rows // sampler.batch_shards, slots,
                                              jnp.bfloat16))


def estimate(config, devices: int, student_size: str | None = None,
             teacher_size: str | None = None, platform: str | None = None) -> dict[str, int]:
  """Per-device bytes of each part of a run (see the module docstring); on a TPU `platform`
  (`HBM_GIB`'s tpu_*) also the weight copies XLA makes for a decode loop
  (`Sampler.relaid_out_bytes`)."""
  tpu = (platform or "").startswith("tpu")
  mesh = abstract_mesh(config.mesh.shape, devices)
  rules = sharding.resolve(config.mesh.get("rules"))
  student = model_config(config.model.family, config.student.path, student_size,
                         "student")
  param_dtype = jnp.dtype(config.student.dtype)
  compute = jnp.dtype(config.train.compute_dtype)
  optimizer = ts.make_optimizer(config.train.optimizer)
  state = ts.state_shardings(student, optimizer, mesh, rules, param_dtype=param_dtype)
  params = models.of(student).param_shapes(student, param_dtype)
  master = sharding.bytes_per_device(params, state.params)
  out = {"student params": master, "gradients": master,  # gradients: like the params
         "optimizer state": sharding.bytes_per_device(jax.eval_shape(optimizer.init, params),
                                                      state.opt_state)}
  sampler = Sampler(student, mesh=mesh, rules=rules)
  out["sampling copy (compute dtype)"] = _sampling_params(sampler, compute)
  if config.train.loss.beta:
    out["reference params"] = master
  method = methods.get(config.method)
  train = config.train
  rows = -(-train.chunk_rows // sharding.shard_count("batch", mesh, rules))  # on a device
  length = learner.longest_chunk(config, method, student, PROMPT_OVERHEAD)
  out["train step activations"] = models.of(student).activations.train_step(
      student, rows, length, compute_dtype=compute, remat=train.remat,
      delta_chunk=train.delta_chunk_size, logprob_chunk=train.logprob_chunk)
  questions = config.questions_per_step + (config.buffer.replay_per_step
                                           if config.buffer.enabled else 0)
  rollout_cfg, zppo_cfg = config.rollout, config.zppo
  # The prompt of an original question is short; BCQ/NCQ prompts go up to max_prompt_tokens.
  out["rollout cache (original)"], out["prefill activations (original)"] = _call(
      sampler, questions, 512, rollout_cfg.max_new_tokens, rollout_cfg.group_size)
  if zppo_cfg.bcq or zppo_cfg.ncq:
    # as many prompts as the hard questions can make (the run's fixed call shape)
    prompts = max(stages.sample_shapes(config.questions_per_step, config.buffer, zppo_cfg,
                                       True, 0, 0)["reformulated"]["rows"])
    out["rollout cache (BCQ/NCQ)"], out["prefill activations (BCQ/NCQ)"] = _call(
        sampler, prompts, zppo_cfg.max_prompt_tokens, rollout_cfg.max_new_tokens,
        rollout_cfg.group_size)
  if tpu:
    out["relaid-out weights (student decode, TPU)"] = sampler.relaid_out_bytes(compute)
  if config.teacher.source == "model":
    teacher = model_config(config.model.family, config.teacher.path, teacher_size,
                           "teacher")
    dtype = jnp.dtype(config.teacher.dtype)
    if method.teacher == methods.LOGPROBS:   # it scores the chunks: a forward at a time
      out["teacher params"] = _params(teacher, dtype, mesh, rules)
      out["scoring activations"] = models.of(teacher).activations.prefill(teacher, rows,
                                                                          length, dtype)
    else:
      teacher_sampler = Sampler(teacher, mesh=mesh, rules=rules)
      out["teacher params"] = _sampling_params(teacher_sampler, dtype)
      out["teacher rollout cache"], out["teacher prefill activations"] = _call(
          teacher_sampler, questions, 512, config.teacher.max_new_tokens,
          config.teacher.num_rollouts)
      if tpu:
        out["relaid-out weights (teacher decode, TPU)"] = teacher_sampler.relaid_out_bytes(
            dtype)
  return out


def during(parts: dict[str, int], phase: str) -> int:
  """Bytes a device holds during one phase (`PHASES`): what lives throughout, and it."""
  return (sum(v for k, v in parts.items() if k not in PHASES)
          + phases(parts).get(phase, 0))


def phases(parts: dict[str, int]) -> dict[str, int]:
  """Bytes of each phase of a step (`PHASES`): one sampler call, or the update."""
  out = {}
  for part, named in PHASES.items():
    for phase in (named,) if isinstance(named, str) else named:
      if part in parts:
        out[phase] = out.get(phase, 0) + parts[part]
  return out


def peak(parts: dict[str, int]) -> int:
  """The phases come one at a time (one sampler call after another, then the update); the
  rest lives throughout."""
  return max((during(parts, phase) for phase in phases(parts)), default=during(parts, ""))


def table(parts: dict[str, int], hbm_gib: float | None = None) -> str:
  lines = ["| per device | GiB |", "|---|---|"]
  lines += [f"| {k} | {v / GIB:.2f} |" for k, v in parts.items()]
  largest = max(phases(parts).items(), key=lambda kv: kv[1], default=("none", 0))[0]
  lines.append(f"| **peak (params + states + the largest phase: {largest})** | "
               f"**{peak(parts) / GIB:.2f}** |")
  if hbm_gib:
    lines.append(f"| HBM | {hbm_gib} |")
  return "\n".join(lines)


def main(argv):
  del argv
  f = flags.FLAGS
  parts = estimate(f.config, f.devices, f.student_size, f.teacher_size, f.platform)
  print(table(parts, HBM_GIB.get(f.platform)))


if __name__ == "__main__":
  # Defined here, not at import: zppo_jax.train defines --config too, and both are imported
  # by one test process.
  config_flags.DEFINE_config_file("config", None, "A configs/*.py file (:arg optional).")
  flags.DEFINE_integer("devices", None, "Devices (chips / GPUs) of the whole run.")
  flags.DEFINE_string("student_size", None, "Official shapes instead of config.json.")
  flags.DEFINE_string("teacher_size", None, "Official shapes instead of config.json.")
  flags.DEFINE_enum("platform", None, sorted(HBM_GIB),
                    "Compare with its HBM (on TPU, also count the decode loops' weight copies).")
  flags.mark_flags_as_required(["config", "devices"])
  app.run(main, flags_parser=run_config.parse_flags)
