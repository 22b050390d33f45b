"""Where a training run's wall time goes, for this checkout and a previous commit side by side.

Each tree runs the same trainer command in a process of its own, from a cold start (an empty
workdir and an empty persistent compilation cache; this checkout once more with the cache its
first run filled), and reports:
- wall time split by phase: import, model load, trainer set-up, precompilation, the steps
  (and within them sampling, teacher, grading, reformulated sampling, train step), held-out
  evaluation, checkpoints, export;
- every jitted program: how many times it was compiled or loaded from the persistent cache
  and the seconds it took (from `jax.monitoring` events), XLA compilations in all;
- step times: first steps, and the steady state (median of the last third), with trained
  and sampled tokens/s against this CPU's measured float32 matmul peak.

    python benchmarks/profile_train.py --rev HEAD~1 --out benchmarks/profile_tiny.json

Each previous commit (`--rev`, repeatable) is checked out with `git worktree` into a
temporary folder. Trainer arguments after `--` go to every run (default: configs/tiny.py
as the README runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("time/rollout", "time/teacher", "time/grade", "time/reformulated_rollout",
          "time/train")


def child(tree: str, workdir: str, train_args: list[str]) -> dict:
  """Runs the trainer of `tree` in this process, timing its phases. Compilations are counted
  here, not by zppo_jax.compilation, which a previous commit may not have."""
  start = time.perf_counter()
  import jax
  from jax import monitoring
  compiles: dict[str, list] = {}

  def on_duration(event, duration, fun_name="?", **_):
    if event == "/jax/core/compile/backend_compile_duration":
      entry = compiles.setdefault(fun_name, [0, 0.0])
      entry[0] += 1
      entry[1] += duration
  hits = []
  monitoring.register_event_duration_secs_listener(on_duration)
  monitoring.register_event_listener(
      lambda event, **_: hits.append(1) if event == "/jax/compilation_cache/cache_hits" else None)
  sys.path.insert(0, tree)
  os.chdir(tree)
  from absl import flags, logging
  from zppo_jax import train
  try:
    from zppo_jax import policies
  except ImportError:  # a tree from before zppo_jax/policies.py: train.load_* below
    policies = None
  logging.set_verbosity(logging.WARNING)
  imported = time.perf_counter()
  timers: dict[str, float] = {}

  def timed(owner, name, key):
    fn = getattr(owner, name, None)
    if fn is None:  # a stage the other tree does not have
      return

    def wrapper(*args, **kwargs):
      t = time.perf_counter()
      try:
        return fn(*args, **kwargs)
      finally:
        timers[key] = timers.get(key, 0.0) + time.perf_counter() - t
    setattr(owner, name, wrapper)

  for owner, name, key in [(train, "load_student", "model load"),
                           (train, "load_models", "model load"),
                           (policies, "load", "model load"),
                           (train.Trainer, "evaluate", "evaluation"),
                           (train.Trainer, "save", "checkpoints"),
                           (train.Trainer, "export", "export"),
                           (train.Trainer, "train_step", "steps"),   # before the rl/ package
                           (train.Trainer, "rl_step", "steps"),
                           (train.Trainer, "precompile", "precompile")]:
    timed(owner, name, key)
  flags.FLAGS(["train", f"--workdir={workdir}", *train_args])
  t = time.perf_counter()
  trainer = train.Trainer(flags.FLAGS.config, workdir)
  setup = (time.perf_counter() - t - timers.get("model load", 0.0)
           - timers.get("precompile", 0.0))
  params = sum(x.size for x in jax.tree.leaves(trainer.learner.state.params))
  t = time.perf_counter()
  trainer.run()
  run_wall = time.perf_counter() - t
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(x) for x in f if x.strip()]
  lines = [x for x in lines if "time/step" in x and not x.get("resume")]
  steps = [x["time/step"] for x in lines]
  tail = lines[-max(1, len(lines) // 3):]
  return {
      "wall_s": time.perf_counter() - start, "import_s": imported - start,
      "model_load_s": timers.get("model load", 0.0), "setup_s": setup,
      "precompile_s": timers.get("precompile", 0.0),
      "steps_s": timers.get("steps", 0.0),
      "phases_s": {k: sum(x.get(k, 0.0) for x in lines) for k in PHASES},
      "evaluation_s": timers.get("evaluation", 0.0),
      "checkpoints_s": timers.get("checkpoints", 0.0),
      "export_s": timers.get("export", 0.0),
      "rest_of_run_s": run_wall - sum(timers.get(k, 0.0) for k in
                                      ("steps", "evaluation", "checkpoints", "export")),
      "compiles": {k: [n, round(s, 2)] for k, (n, s) in sorted(compiles.items(),
                                                              key=lambda kv: -kv[1][1])},
      "programs": sum(n for n, _ in compiles.values()),
      "compile_count": sum(n for n, _ in compiles.values()) - len(hits),
      "cache_hits": len(hits),
      "compile_s": sum(s for _, s in compiles.values()),
      "steps": len(steps), "step_times_s": [round(s, 2) for s in steps],
      "steady_step_s": statistics.median(x["time/step"] for x in tail),
      "steady_trained_tokens_per_s": statistics.median(
          x.get("train/tokens", 0.0) / x["time/train"] for x in tail),
      "steady_sampled_tokens_per_s": statistics.median(
          x["throughput/sampled_tokens_per_s"] for x in tail),
      "params": int(params)}


def matmul_peak_gflops() -> float:
  """float32 matmul GFLOP/s of this machine (jitted 1024^3 products, best of 5)."""
  import jax
  import jax.numpy as jnp
  a = jnp.ones((1024, 1024), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(5):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * 1024 ** 3 / best / 1e9


def run_tree(label: str, tree: str, train_args: list[str], cache: str) -> dict:
  """One cold-start run of `tree`'s trainer (a fresh workdir) with the compilation cache in
  `cache`."""
  with tempfile.TemporaryDirectory() as tmp:
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache,
               XDG_CACHE_HOME=os.path.join(tmp, "cache"))
    out = os.path.join(tmp, "profile.json")
    code = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", tree,
                           "--child_out", out, "--workdir", os.path.join(tmp, "run"), "--",
                           *train_args], env=env).returncode
    if code:
      raise SystemExit(f"{label} ({tree}) failed with exit status {code}")
    with open(out) as f:
      result = json.load(f)
  print(label, json.dumps({k: v for k, v in result.items() if k != "compiles"}), flush=True)
  return result


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rev", action="append", default=[],
                 help="a previous commit to run side by side (repeat for several)")
  p.add_argument("--out", default="")
  p.add_argument("--child", default="", help=argparse.SUPPRESS)
  p.add_argument("--child_out", default="", help=argparse.SUPPRESS)
  p.add_argument("--workdir", default="", help=argparse.SUPPRESS)
  p.add_argument("train_args", nargs="*")
  args = p.parse_args()
  train_args = args.train_args or ["--config=configs/tiny.py"]
  if args.child:
    result = child(args.child, args.workdir, train_args)
    with open(args.child_out, "w") as f:
      json.dump(result, f)
    return
  results = {"command": " ".join(sys.argv), "cpu_count": os.cpu_count(),
             "matmul_peak_gflops": matmul_peak_gflops(), "train_args": train_args}
  results["previous"] = {}
  with tempfile.TemporaryDirectory() as tmp:
    for n, rev in enumerate(args.rev):
      short = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
      tree = os.path.join(tmp, f"previous_{n}")
      subprocess.run(["git", "worktree", "add", "--detach", tree, rev], cwd=REPO,
                     check=True, capture_output=True)
      try:
        results["previous"][short] = run_tree(f"previous ({rev})", tree, train_args,
                                              os.path.join(tmp, f"xla_previous_{n}"))
      finally:
        subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=REPO)
    # twice, sharing one compilation cache: the second run is what a rerun of the same config
    # (or the next seed of a comparison) costs
    cache = os.path.join(tmp, "xla_current")
    results["current"] = run_tree("current", REPO, train_args, cache)
    results["current_cached"] = run_tree("current, cache warm", REPO, train_args, cache)
  text = json.dumps(results, indent=1)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
