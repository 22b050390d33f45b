r"""XLA's per-device figures of the real configs' programs, compiled ahead of time for TPU
slices on this CPU machine (`zppo_jax.aot`), next to `zppo_jax.memory`'s hand count.

    python benchmarks/aot_memory.py --runs 2b@v5p:4x4x2 9b@v6e:4x8 --out benchmarks/aot_tpu.json

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
# memory.py's parts live during each program (its "cache" parts are one sampler call's)
LIVE = {"train_step": ("student params", "gradients", "optimizer state",
                       "sampling copy (compute dtype)", "reference params", "teacher params"),
        "student_decode": ("rollout cache (original)",),
        "student_bcq_ncq_decode": ("rollout cache (BCQ/NCQ)",),
        "teacher_decode": ("teacher rollout cache",)}
STATE = ("student params", "optimizer state", "sampling copy (compute dtype)",
         "reference params", "teacher params")


def estimate_of(program: str, parts: dict[str, int]) -> int:
  """memory.py's bytes for the moment `program` runs: the state, plus its own part."""
  names = LIVE[program] + (() if program == "train_step" else STATE)
  return sum(parts.get(k, 0) for k in set(names))


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", nargs="+", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--programs", nargs="*", default=(),
                      help="only these (zppo_jax.aot), space- or comma-separated")
  parser.add_argument("--override", nargs="*", default=(),
                      help="config fields for every run, e.g. train.chunk_rows=32")
  args = parser.parse_args(argv)
  programs = [name for item in args.programs for name in item.split(",") if name]
  results = {}
  for run in args.runs:
    size, topology = run.split("@")
    chip = topology.split(":")[0]
    config = run_config.config_module("zppo.py").get_config(f"size={size},mesh=tpu_{chip}")
    for item in args.override:
      key, value = item.split("=", 1)
      *parents, leaf = key.split(".")
      node = config
      for name in parents:
        node = node[name]
      node[leaf] = type(node[leaf])(value)
    log = lambda m, run=run: print(f"{run}: {m}", file=sys.stderr, flush=True)
    report = aot.run(config, topology, only=programs, log=log)
    parts = memory.estimate(config, report["devices"])
    report["memory_py"] = parts
    results[run] = report
    print(aot.table(report), flush=True)
    for name in LIVE:
      if "bytes_per_device" in report["programs"].get(name, {}):
        xla, est = report["programs"][name]["bytes_per_device"], estimate_of(name, parts)
        print(f"{run} {name}: XLA {xla / GIB:.2f} GiB, memory.py {est / GIB:.2f} GiB "
              f"({(xla - est) / max(est, 1):+.0%})", flush=True)
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main(sys.argv[1:])
