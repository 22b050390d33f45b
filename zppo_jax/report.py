r"""The comparison's results page, from the runs `zppo_jax.compare` left in a workdir.

  results.md    held-out and transfer accuracy with 95% intervals over seeds and the gain
                over the starting student; graduation / admission by bucket; drift (KL to
                the starting student); BCQ / NCQ accuracy over training; the paper's claims,
                each marked holds / not shown / reversed by its interval (`stats`)
  summary.json  every number behind them, per seed
  *.png         FIGURES

Intervals: seeds are the replication unit (t intervals of per-seed values, paired by seed
for gains); graduation counts pool the seeds' questions (Wilson / Newcombe intervals).
"""

from __future__ import annotations

import json
import os
import re
from typing import Sequence

import numpy as np

from zppo_jax import metric_writer, stats

STUDENT = "Student (start)"
BUCKETS = ("0/8", "1/8", "2/8", "3/8")
FIGURES = ("graduation.png", "heldout_accuracy.png", "buffer_size.png",
           "reformulation_accuracy.png", "reformulation_over_training.png", "drift.png")
TAIL = 5  # steps averaged for "at the end" training figures


def slug(label: str) -> str:
  """A directory name for a run label ("GRPO† + teacher response" ->
  grpo_dagger_teacher_response)."""
  text = label.replace("†", " dagger ").replace("+", " ")
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def run_dir(workdir: str, label: str, seed: int) -> str:
  return os.path.join(workdir, "runs", slug(label), f"seed_{seed}")


# ------------------------------------------------------------------------------ collecting

def collect(workdir: str, labels: Sequence[str], seeds) -> dict:
  """{"runs": {label: {seed: {"metrics", "reformulations"}}}, "student": {seed: eval.json}}."""
  data = {}
  for label in labels:
    for seed in seeds:
      d = run_dir(workdir, label, seed)
      metrics = metric_writer.read(os.path.join(d, "metrics.jsonl"))
      if metrics:
        data.setdefault(label, {})[seed] = {
            "metrics": metrics,
            "reformulations": metric_writer.read(os.path.join(d, "reformulations.jsonl"))}
  student = {}
  for seed in seeds:
    path = os.path.join(workdir, "student", f"seed_{seed}", "eval.json")
    if os.path.exists(path):
      with open(path) as f:
        student[seed] = json.load(f)
  return {"runs": data, "student": student}


def eval_key(collected: dict) -> str:
  """The avg@k metric name of the runs (k from their config)."""
  for seeds in collected["runs"].values():
    for run in seeds.values():
      for line in run["metrics"]:
        for key in line:
          if key.startswith("eval/average/avg@"):
            return key.rsplit("/", 1)[1]
  raise ValueError("no held-out evaluation in these metrics (set config.eval.every)")


def final_accuracy(collected: dict) -> tuple[list[str], dict[str, dict[int, dict[str, float]]]]:
  """(benchmarks, {label: {seed: {benchmark or "average": avg@k at the end}}})."""
  out, names = {}, []
  key = eval_key(collected)
  for seed, doc in collected["student"].items():
    names = list(doc["benchmarks"])
    values = {n: doc["benchmarks"][n][key] for n in names}
    out.setdefault(STUDENT, {})[seed] = {**values, "average": float(np.mean(list(values.values())))}
  for label, seeds in collected["runs"].items():
    for seed, run in seeds.items():
      last = [line for line in run["metrics"] if f"eval/average/{key}" in line][-1]
      names = names or [k.split("/")[1] for k in last if k.endswith(key) and "average" not in k]
      out.setdefault(label, {})[seed] = {**{n: last[f"eval/{n}/{key}"] for n in names},
                                         "average": last[f"eval/average/{key}"]}
  return names, out


def _training(run: dict) -> list[dict]:
  return [line for line in run["metrics"] if "reward/mean" in line]


def buckets(run: dict) -> dict[str, tuple[int, int]]:
  """{bucket: (graduated, admitted)} at the end of one run."""
  last = _training(run)[-1] if _training(run) else {}
  return {b: (int(last.get(f"buffer/graduated_total/{b}") or 0),
              int(last.get(f"buffer/admitted_total/{b}") or 0)) for b in BUCKETS}


def run_stats(run: dict) -> dict[str, float]:
  """One run's training-set figures."""
  lines = _training(run)
  def mean(key, part=slice(None)):
    values = [line[key] for line in lines[part] if line.get(key) is not None]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else np.nan
  admitted = sum(line.get("buffer/admitted") or 0 for line in lines)
  out = {"admitted": admitted,
         "graduated": (lines[-1].get("buffer/graduated_total") or 0) if lines else 0,
         "revisits_per_admitted": (sum(line.get("questions/replayed") or 0 for line in lines)
                                   / admitted if admitted else np.nan),
         "reward_first": mean("reward/mean", slice(0, TAIL)),
         "reward_last": mean("reward/mean", slice(-TAIL, None)),
         "kl_to_start": mean("train/kl_to_start", slice(-TAIL, None)),
         "entropy_last": mean("rollout/entropy", slice(-TAIL, None)),
         "zero_variance": mean("zero_advantage_fraction")}
  third = max(1, len(lines) // 3)
  for kind in ("bcq", "ncq"):
    rows = [r for r in run["reformulations"] if r["kind"] == kind]
    out[f"{kind}_count"] = len(rows)
    out[f"{kind}_accuracy"] = float(np.mean([r["accuracy"] for r in rows])) if rows else np.nan
    # what the same questions scored when asked plainly that step
    out[f"{kind}_plain"] = (float(np.mean([r["original_accuracy"] for r in rows]))
                            if rows else np.nan)
    out[f"{kind}_first"] = mean(f"{kind}/accuracy", slice(0, third))
    out[f"{kind}_last"] = mean(f"{kind}/accuracy", slice(-third, None))
  return out


# ------------------------------------------------------------------------------ tables

def _pct(ci: stats.Interval, signed: bool = False) -> str:
  if ci.n == 0 or np.isnan(ci.mean):
    return "–"
  sign = "+" if signed else ""
  if ci.n == 1:
    return f"{100 * ci.mean:{sign}.1f}"
  return f"{100 * ci.mean:{sign}.1f} [{100 * ci.low:{sign}.1f}, {100 * ci.high:{sign}.1f}]"


def _num(ci: stats.Interval, digits: int = 1) -> str:
  if ci.n == 0 or np.isnan(ci.mean):
    return "–"
  return f"{ci.mean:.{digits}f}" + ("" if ci.n == 1 else f" ± {ci.half_width:.{digits}f}")


def pooled(collected, label) -> dict[str, tuple[int, int]]:
  """{bucket: (graduated, admitted)} summed over the label's seeds."""
  out = {b: [0, 0] for b in BUCKETS}
  for run in collected["runs"].get(label, {}).values():
    for b, (g, a) in buckets(run).items():
      out[b][0] += g
      out[b][1] += a
  return {b: (g, a) for b, (g, a) in out.items()}


def tables(collected: dict, labels: Sequence[str], seeds, command: str) -> tuple[str, dict]:
  names, final = final_accuracy(collected)
  key = eval_key(collected)
  columns = names + ["average"]
  base = final.get(STUDENT, {})
  summary = {"command": command, "seeds": list(seeds), "metric": key, "final": {},
             "gain": {}, "training": {}, "graduation": {}}
  lines = [f"## Accuracy at the end ({key}, %): mean [95% CI] over seeds "
           f"{', '.join(map(str, seeds))}; gains over the starting student paired by seed", "",
           "| method | " + " | ".join(columns) + " | " +
           " | ".join(f"gain, {c} (pp)" for c in columns) + " | seeds above student (" +
           " / ".join(columns) + ") |", "|---|" + "---|" * (2 * len(columns) + 1)]
  for label in [STUDENT] + list(labels):
    if label not in final:
      continue
    per_seed = final[label]
    cells = [_pct(stats.mean_ci([per_seed[s][c] for s in per_seed])) for c in columns]
    summary["final"][label] = {str(s): v for s, v in per_seed.items()}
    shared = [s for s in per_seed if s in base]
    extra = [""] * (len(columns) + 1)
    if label != STUDENT and shared:
      gains = {c: stats.paired_ci([per_seed[s][c] for s in shared], [base[s][c] for s in shared])
               for c in columns}
      up = {c: sum(per_seed[s][c] > base[s][c] for s in shared) for c in columns}
      extra = [_pct(gains[c], True) for c in columns] + [
          " / ".join(f"{up[c]}" for c in columns) + f" of {len(shared)}"]
      summary["gain"][label] = {c: {"mean": g.mean, "low": g.low, "high": g.high,
                                    "seeds_up": up[c], "seeds": len(shared)}
                                for c, g in gains.items()}
    lines.append(f"| {label} | " + " | ".join(cells + extra) + " |")

  per_run = {label: [run_stats(run) for run in collected["runs"][label].values()]
             for label in labels if label in collected["runs"]}
  summary["training"] = per_run
  ci = lambda label, k: stats.mean_ci([r[k] for r in per_run[label]])
  buffered = [label for label in per_run if sum(r["admitted"] for r in per_run[label])]
  lines += ["", "## Graduation by accuracy at admission: graduated / admitted, pooled over "
            "seeds, % [Wilson 95% CI]", "",
            "| method | " + " | ".join(BUCKETS) + " | all | revisits per admitted question |",
            "|---|" + "---|" * (len(BUCKETS) + 2)]
  for label in buffered:
    counts = pooled(collected, label)
    summary["graduation"][label] = counts
    cells = [f"{g}/{a}: {_pct(stats.wilson(g, a))}" for g, a in counts.values()]
    g = int(sum(r["graduated"] for r in per_run[label]))
    a = int(sum(r["admitted"] for r in per_run[label]))
    lines.append(f"| {label} | " + " | ".join(cells) + f" | {g}/{a}: {_pct(stats.wilson(g, a))}"
                 f" | {_num(ci(label, 'revisits_per_admitted'))} |")
  lines += ["", f"## Drift and training signal (mean ± 95% CI half-width over seeds; last "
            f"{TAIL} steps unless said)", "",
            "| method | KL to the starting student | entropy (nats/token) | zero-variance "
            "groups (all steps) | reward, first 5 steps (%) | reward, last 5 steps (%) |",
            "|---|---|---|---|---|---|"]
  for label in per_run:
    pct = lambda k: _pct(stats.mean_ci([r[k] for r in per_run[label]]))
    lines.append(f"| {label} | {_num(ci(label, 'kl_to_start'), 4)} | "
                 f"{_num(ci(label, 'entropy_last'), 3)} | {pct('zero_variance')} | "
                 f"{pct('reward_first')} | {pct('reward_last')} |")
  reformulating = [label for label in per_run
                   if sum(r["bcq_count"] + r["ncq_count"] for r in per_run[label])]
  if reformulating:
    lines += ["", "## BCQ and NCQ prompts (accuracy %, mean [95% CI] over seeds)", "",
              "| method | BCQ groups | BCQ accuracy | same questions asked plainly | BCQ, first "
              "third of steps | BCQ, last third | NCQ groups | NCQ accuracy | same questions "
              "asked plainly | NCQ, first third | NCQ, last third |", "|---" * 11 + "|"]
    for label in reformulating:
      pct = lambda k: _pct(stats.mean_ci([r[k] for r in per_run[label]]))
      lines.append(f"| {label} | " + " | ".join(
          [_num(ci(label, "bcq_count")), pct("bcq_accuracy"), pct("bcq_plain"),
           pct("bcq_first"), pct("bcq_last"), _num(ci(label, "ncq_count")), pct("ncq_accuracy"),
           pct("ncq_plain"), pct("ncq_first"), pct("ncq_last")]) + " |")
  lines += ["", "Command:", "", "```", command, "```", ""]
  return "\n".join(lines), summary


# The paper's claims, as comparisons of two labels on one figure: (claim, the paper's
# numbers, kind, a, b, key). kind: "paired" (per-seed values, paired t), "bucket"
# (pooled graduation proportions, Newcombe).
CLAIMS = (
    ("ZPPO graduates more questions admitted at 0/8 than GRPO†", "28% vs 4%", "bucket",
     "ZPPO", "GRPO†", "0/8"),
    ("... and at 1/8", "54% vs 14%", "bucket", "ZPPO", "GRPO†", "1/8"),
    ("ZPPO gains more held-out accuracy than GRPO†", "+7.9 vs +3.5 pp (0.8B, LLM)", "paired",
     "ZPPO", "GRPO†", "average"),
    ("GRPO† gains more than GRPO without the buffer", "(GRPO† +3.5 pp)", "paired",
     "GRPO†", "GRPO", "average"),
    ("ZPPO gains more than GRPO† + teacher response", "+7.9 vs +1.9 pp", "paired",
     "ZPPO", "GRPO† + teacher response", "average"),
    ("ZPPO gains more than off-policy distillation", "+7.9 vs -2.7 pp", "paired",
     "ZPPO", "Off-policy distill†", "average"),
    ("ZPPO gains more than on-policy distillation", "+7.9 vs -2.0 pp", "paired",
     "ZPPO", "On-policy distill†", "average"),
    ("ZPPO keeps transfer accuracy better than off-policy distillation", "(drift)", "paired",
     "ZPPO", "Off-policy distill†", "transfer"),
    ("GRPO improves held-out accuracy over the starting student", "(GRPO† +3.5 pp)", "paired",
     "GRPO", STUDENT, "heldout"),
    ("ZPPO improves held-out accuracy over the starting student", "+7.9 pp", "paired",
     "ZPPO", STUDENT, "heldout"),
    ("ZPPO improves the average over all sets", "+7.9 pp", "paired", "ZPPO", STUDENT,
     "average"),
    ("ZPPO (both) gains more than ZPPO with BCQ only", "(ablation)", "paired",
     "ZPPO", "ZPPO, BCQ only", "average"),
    ("ZPPO (both) gains more than ZPPO with NCQ only", "(ablation)", "paired",
     "ZPPO", "ZPPO, NCQ only (always)", "average"),
)


def claims(collected: dict) -> tuple[str, list[dict]]:
  """The CLAIMS table: each claim's difference here with its interval and verdict."""
  _, final = final_accuracy(collected)
  lines = ["## The paper's claims on this testbed", "",
           "Verdict from the 95% interval of the difference: *holds* (it lies on the claimed "
           "side of 0), *not shown* (it covers 0), *reversed* (the other side).", "",
           "| claim | paper | here: difference (pp) [95% CI] | verdict |", "|---|---|---|---|"]
  out = []
  for text, paper, kind, a, b, key in CLAIMS:
    if kind == "bucket":
      if a not in collected["runs"] or b not in collected["runs"]:
        continue
      pa, pb = pooled(collected, a), pooled(collected, b)
      diff = stats.two_proportions(pa[key], pb[key])
      here = (f"{pa[key][0]}/{pa[key][1]} vs {pb[key][0]}/{pb[key][1]}: "
              f"{_pct(diff, True)}")
    else:
      if a not in final or b not in final:
        continue
      shared = [s for s in final[a] if s in final[b]]
      if not shared or any(key not in final[x][shared[0]] for x in (a, b)):
        continue  # a set this comparison does not evaluate (other set names)
      diff = stats.paired_ci([final[a][s][key] for s in shared],
                             [final[b][s][key] for s in shared])
      here = f"{_pct(diff, True)} over {len(shared)} seeds"
    verdict = stats.verdict(diff)
    lines.append(f"| {text} | {paper} | {here} | {verdict} |")
    out.append({"claim": text, "a": a, "b": b, "key": key, "difference": diff.mean,
                "low": diff.low, "high": diff.high, "verdict": verdict})
  return "\n".join(lines) + "\n", out


def write(workdir: str, labels: Sequence[str], seeds, command: str, group_size: int = 8,
          header: str = "") -> list[str]:
  """results.md, summary.json and FIGURES from the runs in `workdir`."""
  collected = collect(workdir, labels, seeds)
  if not collected["runs"]:
    raise FileNotFoundError(f"no runs under {workdir}/runs to report on")
  text, summary = tables(collected, labels, seeds, command)
  claim_text, summary["claims"] = claims(collected)
  paths = [os.path.join(workdir, name) for name in ("results.md", "summary.json") + FIGURES]
  with open(paths[0] + ".tmp", "w") as f:
    f.write((header + "\n" if header else "") + claim_text + "\n" + text)
  os.replace(paths[0] + ".tmp", paths[0])
  with open(paths[1] + ".tmp", "w") as f:
    json.dump(summary, f, indent=1, default=float)
  os.replace(paths[1] + ".tmp", paths[1])
  from zppo_jax import figures
  runs = collected["runs"]
  buffered = [label for label in labels if label in runs and any(
      line.get("buffer/size") for run in runs[label].values() for line in run["metrics"])]
  pair = [label for label in ("ZPPO", "GRPO†") if label in runs]
  figures.graduation_figure(collected, paths[2], pair if len(pair) == 2 else buffered)
  figures.heldout_figure(collected, paths[3], labels)
  figures.line_figure(collected, paths[4], buffered, ["buffer/size"],
              "Replay-buffer size (mean over seeds, band = 95% CI)", "questions in the buffer")
  zppo = "ZPPO" if "ZPPO" in runs else labels[-1]
  figures.reformulation_figure(collected, paths[5], zppo, group_size)
  figures.line_figure(collected, paths[6], labels, ["bcq/accuracy", "ncq/accuracy"],
              "BCQ / NCQ accuracy during training (10-step trailing mean; band = 95% CI)",
              "accuracy (%)", scale=100, window=10)
  figures.line_figure(collected, paths[7], labels, ["train/kl_to_start", "rollout/entropy"],
              "Drift from the starting student, and entropy (5-step trailing mean)",
              "nats per token", window=5)
  return paths
