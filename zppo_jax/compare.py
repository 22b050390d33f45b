r"""The paper's comparison on one setup: method configs x seeds, then its results page.

    python -m zppo_jax.compare --workdir results/tiny [--seeds 0,1,2,3,4] [--steps 40] \
        [--jobs 2] [--runs "ZPPO=configs/tiny.py,GRPO=configs/tiny.py:method=grpo"]
    python -m zppo_jax.compare --workdir /data/cmp --options size=0.8b,mesh=tpu_v5p --steps 200

Without `--runs` these are the paper's six methods and the ZPPO ablations BCQ only / NCQ
only (`paper_runs`), on the tiny setup or at the scale `--options` names. Each run is
`python -m zppo_jax.train` in its own process, `--jobs` at a time: a killed comparison
resumes (finished runs are skipped, unfinished ones resume from their checkpoints). Held-out
sets are evaluated every `eval.every` steps; the starting student once per seed with
`zppo_jax.evaluate`. `zppo_jax.report` then writes results.md (with confidence intervals
and the paper's claims checked one by one), summary.json and the figures into the workdir;
`--report_only` redraws them from the runs already there.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
from typing import Sequence

from zppo_jax import metric_writer, report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The paper's methods († = with the replay buffer), in its table's order: (label, method, arg).
PAPER = (
    ("Off-policy distill†", "off_policy_distill", "buffer"),
    ("On-policy distill†", "on_policy_distill", "buffer"),
    ("GRPO", "grpo", ""),
    ("GRPO†", "grpo_buffer", ""),
    ("GRPO† + teacher response", "grpo_teacher_response", ""),
    ("ZPPO", "zppo", ""),
)


# NCQ only is built for every hard question (ncq_always): under the default policy it would
# only meet the hard questions the teacher cannot solve, few where the teacher is strong.
ABLATIONS = (("ZPPO, BCQ only", "zppo", "bcq_only"),
             ("ZPPO, NCQ only (always)", "zppo", "ncq_only,ncq_always"))


def paper_runs(options: str = "", ablations: bool = True) -> list[tuple[str, str]]:
  """The paper's six methods (and the ABLATIONS): on the tiny setup
  (configs/tiny.py:method=...), or, with `options` ("size=0.8b,mesh=tpu_v5p,root=..."),
  each method's config at that scale."""
  out = []
  for label, method, arg in PAPER + (ABLATIONS if ablations else ()):
    if options:
      out.append((label, f"configs/{method}.py:" + ",".join(filter(None, [options, arg]))))
    else:
      out.append((label, "configs/tiny.py:" + ",".join(filter(None, [f"method={method}", arg]))))
  return out


def parse_runs(text: str) -> list[tuple[str, str]]:
  """"Label=config[:arg],Label=config" -> [(label, config)]; commas inside a config's arg
  belong to it when the next part has no '='-separated label (configs/x.py:a,b)."""
  runs: list[list[str]] = []
  for part in text.split(","):
    label, eq, config = part.partition("=")
    if eq and ".py" in config and "/" not in label and ":" not in label:
      runs.append([label.strip(), config.strip()])
    elif runs:
      runs[-1][1] += "," + part.strip()
    else:
      raise ValueError(f"--runs: {part!r} is not Label=configs/file.py[:arg]")
  labels = [label for label, _ in runs]
  if len(set(labels)) != len(labels):
    raise ValueError(f"--runs: labels must differ, got {labels}")
  return [(label, config) for label, config in runs]


# ------------------------------------------------------------------------------ running

def _python(module: str, args: Sequence[str], log: str, env: dict) -> int:
  with open(log, "a") as f:
    f.write(f"$ python -m {module} {' '.join(args)}\n")
    f.flush()
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          stdout=f, stderr=subprocess.STDOUT).returncode


def finished(run_dir: str, steps: int) -> bool:
  """A run is finished when its metrics hold the final evaluation, at step `steps`."""
  lines = metric_writer.read(os.path.join(run_dir, "metrics.jsonl"))
  return bool(lines) and lines[-1]["step"] == steps and any(k.startswith("eval/")
                                                            for k in lines[-1])


def run_all(workdir: str, runs, seeds, steps: int, overrides: Sequence[str], jobs: int = 1):
  """The starting student's evaluation per seed, and every missing or unfinished run, `jobs`
  processes at a time; failures are reported together once the others are done."""
  env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(workdir, ".jax_cache"))
  if jobs > 1:  # processes share the cores: XLA's CPU thread pools would oversubscribe them
    env.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
  sets = [f"--config.{o}" for o in overrides]
  common = [f"--config.total_steps={steps}", f"--config.train.optimizer.total_steps={steps}",
            "--config.eval.at_start=False", "--config.log.progress=False",
            "--config.export.at_end=False", *sets]
  tasks = []  # (what, module, args, directory, done)
  for seed in seeds:
    out = os.path.join(workdir, "student", f"seed_{seed}")
    if not os.path.exists(os.path.join(out, "eval.json")):
      tasks.append((f"the starting student, seed {seed}", "zppo_jax.evaluate",
                    [f"--config={runs[0][1]}", f"--config.seed={seed}", f"--output={out}",
                     "--config.name=student", *sets], out,
                    lambda out=out: os.path.exists(os.path.join(out, "eval.json"))))
  for seed in seeds:
    for label, config in runs:
      d = report.run_dir(workdir, label, seed)
      if not finished(d, steps):
        tasks.append((f"{label} seed {seed}", "zppo_jax.train",
                      [f"--config={config}", f"--config.seed={seed}", f"--workdir={d}", *common],
                      d, lambda d=d: finished(d, steps)))

  def run(task):
    what, module, args, directory, done = task
    os.makedirs(directory, exist_ok=True)
    print(f"[compare] {what} -> {directory}", flush=True)
    code = _python(module, args, os.path.join(directory, "log.txt"), env)
    return None if code == 0 and done() else f"{what} (exit {code}; see {directory}/log.txt)"

  with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
    failed = [f for f in pool.map(run, tasks) if f]
  if failed:
    raise RuntimeError("did not finish: " + "; ".join(failed) +
                       ". Rerun the same command to resume.")


# ------------------------------------------------------------------------------ main

def main(argv):
  from absl import flags
  del argv
  f = flags.FLAGS
  runs = parse_runs(f.runs) if f.runs else paper_runs(f.options, f.ablations)
  seeds = [int(s) for s in f.seeds.split(",") if s.strip()]
  command = "python -m zppo_jax.compare " + " ".join(sys.argv[1:])
  if not f.report_only:
    run_all(f.workdir, runs, seeds, f.steps, f.set, f.jobs)
  header = ""
  if f.header:
    with open(f.header) as h:
      header = h.read()
  for path in report.write(f.workdir, [label for label, _ in runs], seeds, command,
                           f.group_size, header):
    print(path)


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("workdir", None, "Runs, table and figures go here.")
  flags.DEFINE_string("runs", "", "Label=configs/file.py[:arg],... (default: the paper's six "
                      "methods and the ablations on the tiny setup)")
  flags.DEFINE_string("options", "", "Without --runs: the paper's six methods at this scale, "
                      "e.g. size=0.8b,mesh=tpu_v5p,root=/checkpoints (default: the tiny setup)")
  flags.DEFINE_bool("ablations", True, "Without --runs: also ZPPO with BCQ only / NCQ only.")
  flags.DEFINE_string("seeds", "0,1,2,3,4", "Comma-separated seeds.")
  flags.DEFINE_integer("steps", 40, "Training steps of every run (the tiny default: 40).")
  flags.DEFINE_integer("jobs", 1, "Runs at once (separate processes).")
  flags.DEFINE_multi_string("set", [], "A config override for every run, e.g. eval.k=8.")
  flags.DEFINE_integer("group_size", 8, "G of the runs (x axis of the reformulation figure).")
  flags.DEFINE_string("header", "", "A Markdown file put at the top of results.md (the "
                      "setup and the reading of the numbers).")
  flags.DEFINE_bool("report_only", False, "Only redraw the table and figures.")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
