r"""The paper's comparison on one setup: method configs x seeds, then a table and figures.

    python -m zppo_jax.compare --workdir results/tiny --seeds 0,1,2 [--steps 30] \
        [--runs "ZPPO=configs/tiny.py,GRPO=configs/tiny.py:method=grpo"] [--set eval.k=8]
    python -m zppo_jax.compare --workdir /data/cmp --options size=0.8b,mesh=tpu_v5p --steps 200

Without `--runs` these are the paper's six methods (`paper_runs`), on the tiny setup or at
the scale `--options` names. Each run is `python -m zppo_jax.train` in its own process (a killed comparison resumes:
finished runs are skipped, unfinished ones resume from their checkpoints), with held-out
evaluation every `eval.every` steps; the starting student is evaluated once per seed with
`zppo_jax.evaluate`. Then, in the workdir:
  results.md                   held-out avg@k per method, mean ± std over seeds, and the
                               gain over the starting student (the paper's table), plus
                               the training-set figures behind it
  summary.json                 every number of the table, per seed
  graduation.png               cumulative graduations per admission bucket, ZPPO vs GRPO†
  heldout_accuracy.png         held-out avg@k against step, per method and set
  buffer_size.png              replay-buffer size against step
  reformulation_accuracy.png   BCQ / NCQ accuracy against the original question's accuracy
`--report_only` redraws these from the runs already in the workdir.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Sequence

import numpy as np

from zppo_jax import metric_writer

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


def paper_runs(options: str = "") -> list[tuple[str, str]]:
  """The paper's six methods: on the tiny setup (configs/tiny.py:method=...), or, with
  `options` ("size=0.8b,mesh=tpu_v5p,root=/checkpoints"), each method's config at that scale."""
  out = []
  for label, method, arg in PAPER:
    if options:
      out.append((label, f"configs/{method}.py:" + ",".join(filter(None, [options, arg]))))
    else:
      out.append((label, "configs/tiny.py:" + ",".join(filter(None, [f"method={method}", arg]))))
  return out


STUDENT = "Student (start)"
BUCKETS = ("0/8", "1/8", "2/8", "3/8")
FIGURE_SIZE = (10.0, 7.0)   # inches; at FIGURE_DPI every figure is 1000 x 700 pixels
FIGURE_DPI = 100
GRADUATION_PAIR = ("ZPPO", "GRPO†")


def slug(label: str) -> str:
  """A directory name for a run label ("GRPO† + teacher response" ->
  grpo_dagger_teacher_response)."""
  text = label.replace("†", " dagger ").replace("+", " ")
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


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


def run_all(workdir: str, runs, seeds, steps: int, overrides: Sequence[str]):
  """Every missing or unfinished run, then the starting student's evaluation per seed."""
  env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(workdir, ".jax_cache"))
  common = [f"--config.total_steps={steps}", f"--config.train.optimizer.total_steps={steps}",
            "--config.eval.at_start=False", "--config.log.progress=False",
            "--config.export.at_end=False", *[f"--config.{o}" for o in overrides]]
  for seed in seeds:
    out = os.path.join(workdir, "student", f"seed_{seed}")
    if not os.path.exists(os.path.join(out, "eval.json")):
      os.makedirs(out, exist_ok=True)
      code = _python("zppo_jax.evaluate", [f"--config={runs[0][1]}", f"--config.seed={seed}",
                                           f"--output={out}", "--config.method=student",
                                           *[f"--config.{o}" for o in overrides]],
                     os.path.join(out, "log.txt"), env)
      if code:
        raise RuntimeError(f"evaluating the starting student failed; see {out}/log.txt")
    for label, config in runs:
      run_dir = os.path.join(workdir, "runs", slug(label), f"seed_{seed}")
      if finished(run_dir, steps):
        continue
      os.makedirs(run_dir, exist_ok=True)
      print(f"[compare] {label} seed {seed} -> {run_dir}", flush=True)
      code = _python("zppo_jax.train", [f"--config={config}", f"--config.seed={seed}",
                                        f"--workdir={run_dir}", *common],
                     os.path.join(run_dir, "log.txt"), env)
      if code or not finished(run_dir, steps):
        raise RuntimeError(f"run {label} seed {seed} did not finish (exit {code}); see "
                           f"{run_dir}/log.txt; rerun the same command to resume")


# ------------------------------------------------------------------------------ collecting

def collect(workdir: str, runs, seeds) -> dict:
  """{label: {seed: {"metrics": [...], "reformulations": [...]}}} and the student's evals."""
  data = {}
  for label, _ in runs:
    for seed in seeds:
      run_dir = os.path.join(workdir, "runs", slug(label), f"seed_{seed}")
      metrics = metric_writer.read(os.path.join(run_dir, "metrics.jsonl"))
      if metrics:
        data.setdefault(label, {})[seed] = {
            "metrics": metrics,
            "reformulations": metric_writer.read(os.path.join(run_dir, "reformulations.jsonl"))}
  student = {}
  for seed in seeds:
    path = os.path.join(workdir, "student", f"seed_{seed}", "eval.json")
    if os.path.exists(path):
      with open(path) as f:
        student[seed] = json.load(f)
  return {"runs": data, "student": student}


def _first_run(collected: dict) -> dict:
  return next(iter(next(iter(collected["runs"].values())).values()))


def _eval_key(lines: list[dict]) -> str:
  """The avg@k metric name of the runs (k from their config)."""
  for line in lines:
    for key in line:
      if key.startswith("eval/average/avg@"):
        return key.rsplit("/", 1)[1]
  raise ValueError("no held-out evaluation in these metrics (set config.eval.every)")


def final_accuracy(collected: dict) -> tuple[list[str], dict[str, dict[int, dict[str, float]]]]:
  """(benchmarks, {label: {seed: {benchmark or "average": avg@k at the end}}})."""
  out, names = {}, []
  student = collected["student"]
  if student:
    first = next(iter(student.values()))
    key = f"avg@{first['settings']['k']}"
    names = list(first["benchmarks"])
    out[STUDENT] = {seed: {**{n: doc["benchmarks"][n][key] for n in names},
                           "average": float(np.mean([doc["benchmarks"][n][key] for n in names]))}
                    for seed, doc in student.items()}
  for label, seeds in collected["runs"].items():
    for seed, run in seeds.items():
      last = [line for line in run["metrics"] if any(k.startswith("eval/") for k in line)][-1]
      key = _eval_key([last])
      names = names or [k.split("/")[1] for k in last if k.endswith(key) and "average" not in k]
      out.setdefault(label, {})[seed] = {**{n: last[f"eval/{n}/{key}"] for n in names},
                                         "average": last[f"eval/average/{key}"]}
  return names, out


def _cell(values: Sequence[float]) -> str:
  values = 100 * np.asarray(values, np.float64)
  spread = values.std(ddof=1) if len(values) > 1 else 0.0
  return f"{values.mean():.1f} ± {spread:.1f}"


def _train_stats(seeds: dict) -> dict[str, list[float]]:
  """Per seed: totals and means over the run, from its training metrics."""
  stats: dict[str, list[float]] = {}
  def add(key, value):
    stats.setdefault(key, []).append(float(value))
  for run in seeds.values():
    lines = [line for line in run["metrics"] if "reward/mean" in line]
    rewards = [line["reward/mean"] for line in lines if line["reward/mean"] is not None]
    add("admitted", sum(line.get("buffer/admitted") or 0 for line in lines))
    add("graduated", (lines[-1].get("buffer/graduated_total") or 0) if lines else 0)
    add("reward_first", np.mean(rewards[:5]) if rewards else np.nan)
    add("reward_last", np.mean(rewards[-5:]) if rewards else np.nan)
    for kind in ("bcq", "ncq"):
      rows = [r for r in run["reformulations"] if r["kind"] == kind]
      add(f"{kind}_count", len(rows))
      add(f"{kind}_accuracy", np.mean([r["accuracy"] for r in rows]) if rows else np.nan)
  return stats


def table(collected: dict, runs, seeds, command: str) -> tuple[str, dict]:
  names, final = final_accuracy(collected)
  k = _eval_key(_first_run(collected)["metrics"])
  columns = names + ["average"]
  base = final.get(STUDENT, {})
  base_avg = np.mean([v["average"] for v in base.values()]) if base else None
  lines = [f"# Held-out accuracy ({k}, %), mean ± std over seeds {', '.join(map(str, seeds))}",
           "", "| method | " + " | ".join(columns) + " | gain over student (pp) |",
           "|---|" + "---|" * (len(columns) + 1)]
  summary = {"command": command, "seeds": list(seeds), "metric": k, "final": {}}
  for label in [STUDENT] + [label for label, _ in runs]:
    if label not in final:
      continue
    per_seed = final[label]
    cells = [_cell([per_seed[s][c] for s in per_seed]) for c in columns]
    averages = [per_seed[s]["average"] for s in per_seed]
    gain = "" if label == STUDENT or base_avg is None else \
        f"{100 * (np.mean(averages) - base_avg):+.1f}"
    lines.append(f"| {label} | " + " | ".join(cells) + f" | {gain} |")
    summary["final"][label] = {str(s): v for s, v in per_seed.items()}
  lines += ["", "## Training-set figures (totals per run, mean ± std over seeds)", "",
            "| method | admitted | graduated | BCQ groups | BCQ accuracy | NCQ groups | "
            "NCQ accuracy | reward, first 5 steps | reward, last 5 steps |",
            "|---|---|---|---|---|---|---|---|---|"]
  summary["training"] = {}
  for label, _ in runs:
    if label not in collected["runs"]:
      continue
    stats = _train_stats(collected["runs"][label])
    summary["training"][label] = stats
    def fmt(key, percent=False):
      values = np.asarray(stats[key], np.float64)
      if np.all(np.isnan(values)):
        return "–"
      scale = 100 if percent else 1
      return f"{scale * np.nanmean(values):.1f} ± {scale * np.nanstd(values):.1f}"
    lines.append(f"| {label} | {fmt('admitted')} | {fmt('graduated')} | {fmt('bcq_count')} | "
                 f"{fmt('bcq_accuracy', True)} | {fmt('ncq_count')} | {fmt('ncq_accuracy', True)}"
                 f" | {fmt('reward_first', True)} | {fmt('reward_last', True)} |")
  lines += ["", "Command:", "", "```", command, "```", ""]
  return "\n".join(lines), summary


# ------------------------------------------------------------------------------ figures

def _figure(rows: int = 1, cols: int = 1):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(rows, cols, figsize=FIGURE_SIZE, dpi=FIGURE_DPI, squeeze=False)
  return plt, fig, axes


def _save(plt, fig, path: str):
  fig.tight_layout()
  fig.savefig(path + ".tmp.png", dpi=FIGURE_DPI)  # fixed size: no bbox_inches="tight"
  plt.close(fig)
  os.replace(path + ".tmp.png", path)


def _series(seeds: dict, key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, [seeds, steps]) of one metric; steps where every seed logged it. A bucket's
  cumulative count is logged from its first entry on: before that it is 0."""
  zero = key.startswith(("buffer/admitted_total/", "buffer/graduated_total/"))
  per_seed = [{line["step"]: line.get(key) or 0 if zero else line[key]
               for line in run["metrics"]
               if (zero and "reward/mean" in line) or line.get(key) is not None}
              for run in seeds.values()]
  steps = sorted(set.intersection(*(set(p) for p in per_seed))) if per_seed else []
  return np.asarray(steps), np.asarray([[p[s] for s in steps] for p in per_seed], np.float64)


def _band(ax, steps, values, label, **style):
  mean = values.mean(axis=0)
  line, = ax.plot(steps, mean, label=label, **style)
  if len(values) > 1:
    ax.fill_between(steps, values.min(axis=0), values.max(axis=0), alpha=0.15,
                    color=line.get_color())


def graduation_figure(collected: dict, path: str, labels: Sequence[str]):
  """Cumulative graduations per admission bucket (the paper's figure)."""
  runs = collected["runs"]
  plt, fig, axes = _figure(2, 2)
  for ax, bucket in zip(axes.ravel(), BUCKETS):
    for label in labels:
      if label not in runs:
        continue
      steps, grads = _series(runs[label], f"buffer/graduated_total/{bucket}")
      _, admitted = _series(runs[label], f"buffer/admitted_total/{bucket}")
      if not len(steps):
        steps, grads = _series(runs[label], "buffer/size")
        grads = np.zeros_like(grads)
      total = f"{grads[:, -1].mean():.1f} of {admitted[:, -1].mean():.1f} admitted" \
          if admitted.size else "none admitted"
      _band(ax, steps + 1, grads, f"{label} ({total})")
    ax.set_title(f"admitted at accuracy {bucket}")
    ax.set_xlabel("training step")
    ax.set_ylabel("questions graduated (cumulative)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
  fig.suptitle("Graduations from the replay buffer by accuracy at admission "
               "(mean over seeds, band = min–max)")
  _save(plt, fig, path)


def heldout_figure(collected: dict, path: str, labels: Sequence[str]):
  """Held-out avg@k against step, one panel per set and one for their average."""
  runs, student = collected["runs"], collected["student"]
  names, _ = final_accuracy(collected)
  k = _eval_key(_first_run(collected)["metrics"])
  panels = names + ["average"]
  plt, fig, axes = _figure(1, len(panels))
  for ax, name in zip(axes.ravel(), panels):
    for label in labels:
      if label not in runs:
        continue
      steps, values = _series(runs[label], f"eval/{name}/{k}")
      if student:  # step 0 is the starting student, evaluated once per seed
        start = [_student_value(student[s], name, k) for s in runs[label] if s in student]
        if len(start) == len(values):
          steps, values = np.r_[0, steps], np.c_[start, values]
      _band(ax, steps, 100 * values, label, marker="o", markersize=3)
    ax.set_title(f"{name}" if name != "average" else "average over sets")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"held-out {k} (%)")
    ax.grid(alpha=0.3)
  axes.ravel()[0].legend(fontsize=8)
  fig.suptitle("Held-out accuracy during training (mean over seeds, band = min–max)")
  _save(plt, fig, path)


def _student_value(doc: dict, name: str, k: str) -> float:
  if name == "average":
    return float(np.mean([b[k] for b in doc["benchmarks"].values()]))
  return doc["benchmarks"][name][k]


def buffer_figure(collected: dict, path: str, labels: Sequence[str]):
  runs = collected["runs"]
  plt, fig, axes = _figure()
  ax = axes[0, 0]
  for label in labels:
    if label in runs:
      steps, size = _series(runs[label], "buffer/size")
      if size.size and size.max() > 0:
        _band(ax, steps + 1, size, label)
  ax.set_title("Replay-buffer size (mean over seeds, band = min–max)")
  ax.set_xlabel("training step")
  ax.set_ylabel("questions in the buffer")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=9)
  _save(plt, fig, path)


def reformulation_figure(collected: dict, path: str, label: str, group_size: int):
  """Accuracy of each BCQ / NCQ group against its original question's accuracy that step."""
  rows = [r for run in collected["runs"].get(label, {}).values() for r in run["reformulations"]]
  plt, fig, axes = _figure()
  ax = axes[0, 0]
  rng = np.random.default_rng(0)
  for kind, marker, offset in (("bcq", "o", -0.008), ("ncq", "s", 0.008)):
    mine = [r for r in rows if r["kind"] == kind]
    if not mine:
      continue
    x = np.asarray([r["original_accuracy"] for r in mine])
    y = np.asarray([r["accuracy"] for r in mine])
    ax.scatter(x + offset + rng.uniform(-0.01, 0.01, len(x)), y + rng.uniform(-0.01, 0.01, len(y)),
               s=12, alpha=0.35, marker=marker, label=f"{kind.upper()} groups (n={len(mine)})")
    levels = np.unique(x)
    means = [y[x == v].mean() for v in levels]
    ax.plot(levels + offset, means, marker=marker, markersize=8, linewidth=2,
            label=f"{kind.upper()} mean per original accuracy")
  ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="same accuracy as the original")
  ax.set_xlim(-0.05, 1.05)
  ax.set_ylim(-0.05, 1.05)
  ax.set_xticks([i / group_size for i in range(group_size + 1)],
                [f"{i}/{group_size}" for i in range(group_size + 1)])
  ax.set_xlabel(f"accuracy of the original question, same step ({group_size} rollouts)")
  ax.set_ylabel(f"accuracy on the reformulated prompt ({group_size} rollouts)")
  ax.set_title(f"{label}: are BCQ / NCQ prompts easier than the question? (all seeds)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=9, loc="upper left")
  _save(plt, fig, path)


FIGURES = ("graduation.png", "heldout_accuracy.png", "buffer_size.png",
           "reformulation_accuracy.png")


def report(workdir: str, runs, seeds, command: str, group_size: int = 8) -> list[str]:
  """results.md, summary.json and the figures from the runs in `workdir`."""
  collected = collect(workdir, runs, seeds)
  if not collected["runs"]:
    raise FileNotFoundError(f"no runs under {workdir}/runs to report on")
  labels = [label for label, _ in runs]
  text, summary = table(collected, runs, seeds, command)
  paths = [os.path.join(workdir, name) for name in ("results.md", "summary.json") + FIGURES]
  with open(paths[0], "w") as f:
    f.write(text)
  with open(paths[1], "w") as f:
    json.dump(summary, f, indent=1)
  pair = [label for label in GRADUATION_PAIR if label in collected["runs"]]
  buffered = [label for label in labels if label in collected["runs"] and any(
      line.get("buffer/size") for run in collected["runs"][label].values()
      for line in run["metrics"])]
  graduation_figure(collected, paths[2], pair if len(pair) == 2 else buffered)
  heldout_figure(collected, paths[3], labels)
  buffer_figure(collected, paths[4], buffered)
  zppo = "ZPPO" if "ZPPO" in collected["runs"] else labels[-1]
  reformulation_figure(collected, paths[5], zppo, group_size)
  return paths


# ------------------------------------------------------------------------------ main

def main(argv):
  from absl import flags
  del argv
  f = flags.FLAGS
  runs = parse_runs(f.runs) if f.runs else paper_runs(f.options)
  seeds = [int(s) for s in f.seeds.split(",") if s.strip()]
  command = "python -m zppo_jax.compare " + " ".join(sys.argv[1:])
  if not f.report_only:
    run_all(f.workdir, runs, seeds, f.steps, f.set)
  for path in report(f.workdir, runs, seeds, command, f.group_size):
    print(path)


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("workdir", None, "Runs, table and figures go here.")
  flags.DEFINE_string("runs", "", "Label=configs/file.py[:arg],... (default: the paper's six "
                      "methods on the tiny setup)")
  flags.DEFINE_string("options", "", "Without --runs: the paper's six methods at this scale, "
                      "e.g. size=0.8b,mesh=tpu_v5p,root=/checkpoints (default: the tiny setup)")
  flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds.")
  flags.DEFINE_integer("steps", 30, "Training steps of every run.")
  flags.DEFINE_multi_string("set", [], "A config override for every run, e.g. eval.k=8.")
  flags.DEFINE_integer("group_size", 8, "G of the runs (x axis of the reformulation figure).")
  flags.DEFINE_bool("report_only", False, "Only redraw the table and figures.")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
