r"""Every program of a run compiled ahead of time for a TPU slice, on any machine: no TPU and
no weights are needed (shapes come from config.json or the official presets), only the TPU
compiler (`pip install "jax[tpu]"`, which brings libtpu).

    python -m zppo_jax.aot --config configs/zppo.py:size=2b,mesh=tpu_v5p --topology v5p:2x2x4 \
        [--out FILE.json] [--prompt_tokens 512] [--config.mesh.shape='(1,-1,1)']

The run's mesh is built over the topology's devices (`config.mesh`), and each program is
lowered at the config's real shapes and shardings and compiled by XLA for that chip: the
train step's gradient program on one chunk of the longest length bucket (`train.chunk_rows`
rows, `train.remat`), the optimizer update, the log-prob scorers the loss needs, the
student's, the teacher's and the evaluation's prefill and decode loop at their largest calls.
For each, XLA's per-device bytes (arguments, outputs, temporaries), its cost analysis
(FLOPs, bytes accessed) and the bytes its collectives exchange (`zppo_jax.hlo`: read from
the compiled program, every loop's trips counted; a decode program's are one step's) are
printed and written, with the arrays that stay on the device while it runs (params,
optimizer state, the teacher) added to give its peak against the chip's HBM, and what the
figures bound: a train-step MFU and step time, decode and prefill tokens/s, each limited by
the chip's FLOP/s, its HBM bandwidth or its interconnect, whichever is slowest. A program
that does not fit makes the command fail, naming it and its numbers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from zppo_jax import hlo, learner, memory, models, run_config, sharding
from zppo_jax import train_step as ts
from zppo_jax.rl import methods, stages
from zppo_jax.sampler import Sampler

GIB = memory.GIB
SOURCES = 8   # collective sources kept per program in the report


@dataclasses.dataclass(frozen=True)
class Chip:
  hbm_gib: float        # HBM per chip
  hbm_gbps: float       # HBM bandwidth, GB/s
  bf16_tflops: float    # peak dense bfloat16 matmul throughput
  ici_gbps: float | None = None  # bidirectional inter-chip interconnect bandwidth, GB/s


# Per-chip figures of Cloud TPU's system architecture pages, by topology name prefix.
CHIPS = {"v4": Chip(32, 1228, 275), "v5e": Chip(16, 819, 197, 400),
         "v5p": Chip(95, 2765, 459, 1200), "v6e": Chip(32, 1640, 918, 800)}


def topology(name: str):
  """The devices of TPU slice `name` (e.g. "v5p:2x2x4", "v6e:4x4"), and its chip."""
  version = name.split(":")[0]
  if version not in CHIPS:
    raise ValueError(f"--topology {name!r}: the chip must be one of {sorted(CHIPS)} "
                     "(e.g. v5p:2x2x2, v6e:4x4, v5e:2x2)")
  from jax.experimental import topologies
  # only the compiler is used, no chip: another process holding libtpu (a second check, a
  # test) is no reason to refuse
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    desc = topologies.get_topology_desc(topology_name=name, platform="tpu")
  except Exception as e:  # libtpu missing, or a shape the chip does not come in
    raise RuntimeError(f"--topology {name!r}: the TPU compiler could not describe it "
                       f"({type(e).__name__}: {str(e)[:300]}); is jax[tpu] (libtpu) "
                       "installed?") from None
  return desc.devices, CHIPS[version]


@dataclasses.dataclass
class Program:
  """One program of the run: how to lower it, which resident arrays are among its
  arguments (the others stay on the device beside it), and the work of one call."""
  name: str
  lower: Callable[[], jax.stages.Lowered]
  takes: tuple[str, ...]
  kind: str                 # train | update | score | prefill | decode
  tokens: int = 0           # tokens one call processes (decode: one step's rows)
  model_flops: float = 0.0  # the model's FLOPs of one call: 6·N·T training, 2·N·T forward


def _structs(shapes, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      shapes, shardings)


def _param_count(mcfg) -> int:
  """Weights a token's matmuls use: all but an untied input embedding (a lookup)."""
  shapes = models.of(mcfg).param_shapes(mcfg, jnp.float32)
  total = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
  return total - (0 if mcfg.tie_word_embeddings else math.prod(shapes["embed"].shape))


def programs(config, mesh, rules, prompt_tokens: int = 512
             ) -> tuple[list[Program], dict[str, int]]:
  """The run's programs, and the per-device bytes of the arrays that live throughout it."""
  method = methods.get(config.method)
  family = config.model.family
  student = memory.model_config(family, config.student.path, None, "student")
  model = models.of(student)
  param_dtype = jnp.dtype(config.student.dtype)
  compute = jnp.dtype(config.train.compute_dtype)
  optimizer = ts.make_optimizer(config.train.optimizer)
  shardings = ts.state_shardings(student, optimizer, mesh, rules, param_dtype=param_dtype)
  params = _structs(model.param_shapes(student, param_dtype), shardings.params)
  opt_state = _structs(jax.eval_shape(optimizer.init, params), shardings.opt_state)
  replicated = shardings.step
  state = ts.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
                        params=params, opt_state=opt_state,
                        rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated))
  residents = {"student params": sharding.bytes_per_device(params, shardings.params),
               "optimizer state": sharding.bytes_per_device(opt_state, shardings.opt_state)}
  student_sampler = Sampler(student, mesh=mesh, rules=rules)
  # the learner's copy in the compute dtype, laid out as the sampler takes it
  sampling_name = "sampling copy"
  sampling = _structs(model.param_shapes(student, compute), student_sampler.param_shardings)
  residents[sampling_name] = sharding.bytes_per_device(sampling, student_sampler.param_shardings)
  scorers = dict(learner.scored_fields(config, method))
  if learner.REFERENCE in scorers.values():
    residents["reference params"] = residents["student params"]
  teacher = None
  if config.teacher.source == "model":
    teacher = memory.model_config(family, config.teacher.path, None, "teacher")
    t_model = models.of(teacher)
    teacher_sampler = Sampler(teacher, mesh=mesh, rules=rules)
    # a sampled teacher is loaded in its sampler's layout, a scoring one in the train step's
    t_shardings = (t_model.param_shardings(teacher, mesh, rules)
                   if method.teacher == methods.LOGPROBS else teacher_sampler.param_shardings)
    t_params = _structs(t_model.param_shapes(teacher, jnp.dtype(config.teacher.dtype)),
                        t_shardings)
    residents["teacher params"] = sharding.bytes_per_device(t_params, t_shardings)

  out = []
  # -- the update: one chunk of the longest length bucket, then the optimizer
  reformulates = method.reformulates and bool(config.zppo.bcq or config.zppo.ncq)
  overhead = memory.PROMPT_OVERHEAD
  length = learner.longest_chunk(config, method, student, overhead)
  spec = ts.batch_sharding(mesh, rules)
  chunk = learner.chunk_shapes(config.train, length, spec)
  scored = learner.score_shapes(scorers, chunk)
  step = ts.TrainStep(student, optimizer, config.train, mesh, shardings, rules)
  rows, n_student = config.train.chunk_rows, _param_count(student)
  out.append(Program("train_step", lambda: step.lower(state, {**chunk, **scored})["accumulate"],
                     ("student params",), "train", rows * length,
                     6.0 * n_student * rows * length))
  out.append(Program("optimizer_update", lambda: step.lower(state)["apply"],
                     ("student params", "optimizer state"), "update"))
  for field, whose in scorers.items():
    if whose == learner.TEACHER:
      fn = ts.jit_score(teacher, config.train, mesh, t_shardings, rules)
      out.append(Program("teacher_score", lambda fn=fn: fn.lower(t_params, chunk),
                         ("teacher params",), "score", rows * length,
                         2.0 * _param_count(teacher) * rows * length))
    else:
      fn = ts.jit_score(student, config.train, mesh, shardings.params, rules)
      resident = "reference params" if whose == learner.REFERENCE else "student params"
      out.append(Program(f"{whose}_score", lambda fn=fn: fn.lower(params, chunk),
                         (resident,), "score", rows * length, 2.0 * n_student * rows * length))

  # -- the sampler calls: the largest row bucket of each kind, and the evaluation's
  shapes = stages.sample_shapes(config.questions_per_step, config.buffer, config.zppo,
                                reformulates, config.rollout.max_prompt_tokens, overhead)
  question_slots = shapes["questions"]["prompt_slots"] or prompt_tokens
  rollout, stop_slots = config.rollout, 8
  calls = []  # (name, sampler, params, resident, rows, prompt slots, new, samples, T, top_p)
  if config.distill.student_rollouts:
    calls.append(("student", student_sampler, sampling, sampling_name,
                  max(shapes["questions"]["rows"]), question_slots, rollout.max_new_tokens,
                  rollout.group_size, rollout.temperature, rollout.top_p))
  if reformulates:
    calls.append(("student_bcq_ncq", student_sampler, sampling, sampling_name,
                  max(shapes["reformulated"]["rows"]), shapes["reformulated"]["prompt_slots"],
                  rollout.max_new_tokens, rollout.group_size, rollout.temperature,
                  rollout.top_p))
  if teacher is not None and method.teacher != methods.LOGPROBS:
    calls.append(("teacher", teacher_sampler, t_params,
                  "teacher params", max(shapes["questions"]["rows"]), question_slots,
                  config.teacher.max_new_tokens, config.teacher.num_rollouts,
                  config.teacher.temperature, rollout.top_p))
  if config.eval.every:
    calls.append(("eval", student_sampler, sampling, sampling_name, config.eval.batch_size,
                  prompt_tokens, config.eval.max_new_tokens or rollout.max_new_tokens,
                  config.eval.k, config.eval.temperature, config.eval.top_p))
  for name, sampler, call_params, resident, n, slots, new, samples, temperature, top_p in calls:
    lowered = {}

    def lower(part, sampler=sampler, call_params=call_params, n=n, slots=slots, new=new,
              samples=samples, temperature=temperature, top_p=top_p, lowered=lowered):
      if not lowered:
        lowered.update(sampler.lower(call_params, n, slots, max_new_tokens=new, rows=n,
                                     prompt_slots=slots, num_samples=samples,
                                     greedy=temperature == 0, filter_top_p=top_p < 1.0,
                                     stop_slots=stop_slots))
      return lowered[part]

    prompt_rows, prompt_slots, _ = sampler.shapes(n, slots, new, n, slots)
    weights = 2.0 * _param_count(sampler.config)
    out.append(Program(f"{name}_prefill", lambda lower=lower: lower("prefill"), (resident,),
                       "prefill", prompt_rows * prompt_slots,
                       weights * prompt_rows * prompt_slots))
    out.append(Program(f"{name}_decode", lambda lower=lower: lower("decode"), (resident,),
                       "decode", prompt_rows * samples, weights * prompt_rows * samples))
  return out, residents


def analyse(program: Program, compiled, chip: Chip, residents: dict[str, int],
            devices: int) -> dict:
  """XLA's figures of one compiled program, its peak beside the resident arrays it does not
  take, and the bounds they imply (per call; the slice's devices work in parallel)."""
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # XLA's peak from its buffer assignment (liveness-aware); the sum of the parts otherwise
  own = int(getattr(mem, "peak_memory_in_bytes", 0) or (
      mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
      - mem.alias_size_in_bytes))
  beside = sum(v for k, v in residents.items() if k not in program.takes)
  flops, accessed = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  traffic = hlo.collective_bytes(compiled.as_text())
  # a decode call's figures are one step's (the loop's trips are unknown to XLA)
  per = "per_trip" if "per_trip" in traffic else "per_call"
  exchanged = traffic[per]
  out = {"kind": program.kind, "bytes_per_device": own + beside, "program_bytes": own,
         "generated_code_bytes": int(mem.generated_code_size_in_bytes),
         "argument_bytes": int(mem.argument_size_in_bytes),
         "output_bytes": int(mem.output_size_in_bytes),
         "temp_bytes": int(mem.temp_size_in_bytes), "alias_bytes": int(mem.alias_size_in_bytes),
         "resident_beside_bytes": beside, "flops": flops, "bytes_accessed": accessed,
         "collective_bytes": exchanged["total"],
         "collective_bytes_by_op": {k: v for k, v in exchanged.items() if k != "total"},
         # the JAX operations whose collectives move the most (what a sharding fix changes)
         "collective_bytes_by_source": dict(list(traffic[f"{per}_sources"].items())[:SOURCES])}
  if not program.model_flops:
    return out
  peak, bandwidth = chip.bf16_tflops * 1e12, chip.hbm_gbps * 1e9
  model = program.model_flops / devices           # one device's share of the model's FLOPs
  out["xla_flops_over_model_flops"] = flops / model
  # XLA's cost analysis counts a while loop's body once (the layer scan, the head's chunks,
  # the delta rule's chunks, the decode loop): where it saw less than the model's FLOPs, the
  # bounds come from the model's FLOPs and the bytes every call must read (its arguments).
  out["loop_bodies_counted_once"] = flops < 0.9 * model
  if out["loop_bodies_counted_once"]:
    compute_s, memory_s = model / peak, mem.argument_size_in_bytes / bandwidth
  else:
    compute_s, memory_s = flops / peak, accessed / bandwidth
  # what the collectives' results take to arrive at half the chip's bidirectional ICI
  # bandwidth (a chip receives on its links while it sends): a lower bound
  ici_s = exchanged["total"] / (chip.ici_gbps * 1e9 / 2) if chip.ici_gbps else 0.0
  times = {"compute": compute_s, "memory": memory_s, "interconnect": ici_s}
  bound_by = max(times, key=times.get)
  out.update(seconds_bound=times[bound_by], bound_by=bound_by, interconnect_seconds=ici_s,
             tokens_per_second_bound=program.tokens / times[bound_by])
  if program.kind == "train":
    out["mfu_bound"] = model / (out["seconds_bound"] * peak)
  return out


def run(config, topology_name: str, prompt_tokens: int = 512, only: Sequence[str] = (),
        log=print) -> dict:
  """Compiles every program of `config` (or those named in `only`) for the slice; the
  report (`analyse` per program)."""
  devices, chip = topology(topology_name)
  mesh, rules = sharding.from_config(config.mesh, devices=devices)
  progs, residents = programs(config, mesh, rules, prompt_tokens)
  unknown = set(only) - {p.name for p in progs}
  if unknown:
    raise ValueError(f"--programs {sorted(unknown)}: this run's programs are "
                     f"{[p.name for p in progs]}")
  progs = [p for p in progs if not only or p.name in only]
  report = {"topology": topology_name, "devices": len(devices), "chip": dataclasses.asdict(chip),
            "hbm_bytes": int(chip.hbm_gib * GIB), "mesh": dict(mesh.shape),
            "residents": residents, "programs": {}}
  for p in progs:
    log(f"compiling {p.name} ...")
    try:
      compiled = p.lower().compile()
    except jax.errors.JaxRuntimeError as e:  # XLA refuses a program over the chip's HBM
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      report["programs"][p.name] = {"kind": p.kind, "compile_error": str(e).splitlines()[0]}
      continue
    report["programs"][p.name] = analyse(p, compiled, chip, residents, len(devices))
  return report


def table(report: dict) -> str:
  hbm = report["hbm_bytes"]
  lines = [f"{report['topology']} ({report['devices']} chips, mesh {report['mesh']}, "
           f"{report['chip']['hbm_gib']} GiB HBM each)", "",
           "| program | peak GiB/device | own (arg + out + temp) | beside | TFLOP/device | "
           "GB accessed | GB exchanged | implies |", "|---|---|---|---|---|---|---|---|"]
  for name, p in report["programs"].items():
    if "compile_error" in p:
      lines.append(f"| {name} | **does not compile** | {p['compile_error']} | | | | | |")
      continue
    implied = []
    if "mfu_bound" in p:
      implied.append(f"MFU <= {p['mfu_bound']:.0%}")
    if "tokens_per_second_bound" in p:
      implied.append(f"<= {p['tokens_per_second_bound']:,.0f} tokens/s "
                     f"({p['bound_by']}-bound, {p['seconds_bound'] * 1e3:.1f} ms a call)")
    if p.get("loop_bodies_counted_once"):
      implied.append(f"XLA counted loop bodies once ({p['xla_flops_over_model_flops']:.2f}x "
                     "the model's FLOPs)")
    fits = "" if p["bytes_per_device"] <= hbm else " **over HBM**"
    lines.append(
        f"| {name} | {p['bytes_per_device'] / GIB:.2f}{fits} | {p['program_bytes'] / GIB:.2f} "
        f"({p['argument_bytes'] / GIB:.2f} + {p['output_bytes'] / GIB:.2f} + "
        f"{p['temp_bytes'] / GIB:.2f}) | {p['resident_beside_bytes'] / GIB:.2f} | "
        f"{p['flops'] / 1e12:.3f} | {p['bytes_accessed'] / 1e9:.2f} | "
        f"{p['collective_bytes'] / 1e9:.2f}{' a step' if p['kind'] == 'decode' else ''} | "
        f"{'; '.join(implied)} |")
  return "\n".join(lines)


def over_hbm(report: dict) -> list[str]:
  """The programs that do not fit, each with its numbers."""
  hbm = report["hbm_bytes"]
  return [f"{name}: {p['compile_error']}" if "compile_error" in p else
          f"{name}: {p['bytes_per_device'] / GIB:.2f} GiB per device ({p['program_bytes'] / GIB:.2f}"
          f" GiB its own: arguments {p['argument_bytes'] / GIB:.2f}, outputs "
          f"{p['output_bytes'] / GIB:.2f}, temporaries {p['temp_bytes'] / GIB:.2f}; "
          f"{p['resident_beside_bytes'] / GIB:.2f} GiB resident beside it) > {hbm / GIB:.0f} GiB HBM"
          for name, p in report["programs"].items()
          if "compile_error" in p or p["bytes_per_device"] > hbm]


def main(argv):
  del argv
  f = flags.FLAGS
  report = run(f.config, f.topology, f.prompt_tokens, f.programs or (),
               log=lambda m: print(m, file=sys.stderr))
  print(table(report))
  if f.out:
    with open(f.out, "w") as out:
      json.dump(report, out, indent=1)
  failures = over_hbm(report)
  if failures:
    raise SystemExit(f"{f.config.name} does not fit {f.topology}:\n  " + "\n  ".join(failures))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "A configs/*.py file (:arg optional).")
  flags.DEFINE_string("topology", None, "TPU slice, e.g. v5p:2x2x2, v5p:4x4x4, v6e:4x4.")
  flags.DEFINE_string("out", None, "Write the report as JSON here.")
  flags.DEFINE_integer("prompt_tokens", 512, "Prompt slots of the question and evaluation "
                       "calls when rollout.max_prompt_tokens does not fix them.")
  flags.DEFINE_list("programs", None, "Only these programs (default: all of the run's).")
  flags.mark_flags_as_required(["config", "topology"])
  app.run(main, flags_parser=run_config.parse_flags)
