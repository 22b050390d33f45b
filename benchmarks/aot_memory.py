r"""XLA's per-device figures of the real configs' programs, compiled ahead of time for TPU
slices on this CPU machine (`zppo_jax.aot`), next to `zppo_jax.memory`'s hand count.

    python benchmarks/aot_memory.py --runs 2b@v5p:4x4x2 9b@v6e:4x8 --out benchmarks/aot_tpu.json
    python benchmarks/aot_memory.py --compare benchmarks/aot_tpu.json   # memory.py now, no compile

Each run is `<student size>@<topology>`: configs/zppo.py:size=<size>,mesh=tpu_<chip> (the
27B teacher sampled in-process) on that slice. For the programs that hold the most, the
row gives XLA's peak (the program's own bytes and the resident arrays beside it) and
memory.py's count of the same moment: its parts that are live then.
"""

from __future__ import annotations

import argparse
import json
import sys

from zppo_jax import aot, memory, run_config

GIB = memory.GIB
# memory.py's parts live during each program (a sampler call's or the update's: `memory.PHASES`)
LIVE = {"train_step": ("student params", "gradients", "optimizer state",
                       "sampling copy (compute dtype)", "reference params", "teacher params",
                       "train step activations"),
        "student_prefill": ("rollout cache (original)", "prefill activations (original)"),
        "student_decode": ("rollout cache (original)", "relaid-out weights (student decode, TPU)"),
        "student_bcq_ncq_prefill": ("rollout cache (BCQ/NCQ)", "prefill activations (BCQ/NCQ)"),
        "student_bcq_ncq_decode": ("rollout cache (BCQ/NCQ)",
                                   "relaid-out weights (student decode, TPU)"),
        "teacher_prefill": ("teacher rollout cache", "teacher prefill activations"),
        "teacher_decode": ("teacher rollout cache", "relaid-out weights (teacher decode, TPU)")}
STATE = ("student params", "optimizer state", "sampling copy (compute dtype)",
         "reference params", "teacher params")


def estimate_of(program: str, parts: dict[str, int]) -> int:
  """memory.py's bytes for the moment `program` runs: the state, plus its own part."""
  names = LIVE[program] + (() if program == "train_step" else STATE)
  return sum(parts.get(k, 0) for k in set(names))


def run_config_of(run: str, overrides) -> tuple:
  """(config, topology) of a run `<student size>@<topology>` with `field=value` overrides."""
  size, topology = run.split("@")
  chip = topology.split(":")[0]
  config = run_config.config_module("zppo.py").get_config(f"size={size},mesh=tpu_{chip}")
  for item in overrides:
    key, value = item.split("=", 1)
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
      node = node[name]
    node[leaf] = type(node[leaf])(value)
  return config, topology


def platform_of(topology: str) -> str:
  """memory.py's platform of a TPU topology name (v5p:4x4x2 -> tpu_v5p)."""
  return "tpu_" + topology.split(":")[0]


def compare(run: str, report: dict, parts: dict) -> list[str]:
  """XLA's peak of each compiled program beside memory.py's count of the same moment."""
  lines = []
  for name in LIVE:
    if "bytes_per_device" in report["programs"].get(name, {}):
      xla, est = report["programs"][name]["bytes_per_device"], estimate_of(name, parts)
      lines.append(f"{run} {name}: XLA {xla / GIB:.2f} GiB, memory.py {est / GIB:.2f} GiB "
                   f"({(xla - est) / max(est, 1):+.0%})")
  return lines


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", nargs="+", default=())
  parser.add_argument("--out")
  parser.add_argument("--programs", nargs="*", default=(),
                      help="only these (zppo_jax.aot), space- or comma-separated")
  parser.add_argument("--override", nargs="*", default=(),
                      help="config fields for every run, e.g. train.chunk_rows=32")
  parser.add_argument("--compare", nargs="*", default=(),
                      help="saved --out files: their XLA figures beside memory.py's count "
                           "now (no compile; --override where the file does not record it)")
  args = parser.parse_args(argv)
  for path in args.compare:
    with open(path) as f:
      for run, report in json.load(f).items():
        config, topology = run_config_of(run, args.override or report.get("overrides", ()))
        parts = memory.estimate(config, report["devices"], platform=platform_of(topology))
        print("\n".join(compare(run, report, parts)))
  if args.runs and not args.out:
    parser.error("--runs needs --out")
  programs = [name for item in args.programs for name in item.split(",") if name]
  results = {}
  for run in args.runs:
    config, topology = run_config_of(run, args.override)
    log = lambda m, run=run: print(f"{run}: {m}", file=sys.stderr, flush=True)
    report = aot.run(config, topology, only=programs, log=log)
    parts = memory.estimate(config, report["devices"], platform=platform_of(topology))
    report.update(overrides=list(args.override), memory_py=parts)
    results[run] = report
    print(aot.table(report), flush=True)
    print("\n".join(compare(run, report, parts)), flush=True)
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main(sys.argv[1:])
