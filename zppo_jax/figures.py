"""The comparison's figures (`report.FIGURES`), from the runs `report.collect` gathers:
every line is the mean over seeds and its band the 95% t interval (`stats.mean_ci`)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from zppo_jax import report, stats

FIGURE_SIZE = (10.0, 7.0)   # inches; at FIGURE_DPI every figure is 1000 x 700 pixels
FIGURE_DPI = 100


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


def series(seeds: dict, key: str, window: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """(steps, [seeds, steps]) of one metric; steps where every seed logged it. A bucket's
  cumulative count is logged from its first entry on: before that it is 0. `window` > 1:
  a trailing mean over that many logged values (NaNs skipped)."""
  zero = key.startswith(("buffer/admitted_total/", "buffer/graduated_total/"))
  per_seed = [{line["step"]: line.get(key) or 0 if zero else line[key]
               for line in run["metrics"]
               if (zero and "reward/mean" in line) or line.get(key) is not None}
              for run in seeds.values()]
  steps = sorted(set.intersection(*(set(p) for p in per_seed))) if per_seed else []
  values = np.asarray([[p[s] for s in steps] for p in per_seed], np.float64)
  if window > 1 and values.size:
    values = np.stack([np.nanmean(values[:, max(0, i - window + 1):i + 1], axis=1)
                       for i in range(values.shape[1])], axis=1)
  return np.asarray(steps), values


def _band(ax, steps, values, label, **style):
  """Mean over seeds, and its 95% t interval as a band."""
  mean = np.nanmean(values, axis=0)
  line, = ax.plot(steps, mean, label=label, **style)
  if len(values) > 1:
    cis = [stats.mean_ci(values[:, i]) for i in range(values.shape[1])]
    ax.fill_between(steps, [c.low for c in cis], [c.high for c in cis], alpha=0.15,
                    color=line.get_color())


def graduation_figure(collected: dict, path: str, labels: Sequence[str]):
  """Cumulative graduations per admission bucket (the paper's figure)."""
  runs = collected["runs"]
  plt, fig, axes = _figure(2, 2)
  for ax, bucket in zip(axes.ravel(), report.BUCKETS):
    for label in labels:
      if label not in runs:
        continue
      steps, grads = series(runs[label], f"buffer/graduated_total/{bucket}")
      g, a = report.pooled(collected, label)[bucket]
      _band(ax, steps + 1, grads, f"{label} ({g} of {a} admitted, all seeds)")
    ax.set_title(f"admitted at accuracy {bucket}")
    ax.set_xlabel("training step")
    ax.set_ylabel("questions graduated (cumulative, per run)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
  fig.suptitle("Graduations from the replay buffer by accuracy at admission "
               "(mean over seeds, band = 95% CI)")
  _save(plt, fig, path)


def heldout_figure(collected: dict, path: str, labels: Sequence[str]):
  """Held-out avg@k against step, one panel per set and one for their average."""
  runs, student = collected["runs"], collected["student"]
  names, _ = report.final_accuracy(collected)
  key = report.eval_key(collected)
  panels = names + ["average"]
  plt, fig, axes = _figure(1, len(panels))
  for ax, name in zip(axes.ravel(), panels):
    for label in labels:
      if label not in runs:
        continue
      steps, values = series(runs[label], f"eval/{name}/{key}")
      start = [_student_value(student[s], name, key) for s in runs[label] if s in student]
      if student and len(start) == len(values):  # step 0: the starting student, per seed
        steps, values = np.r_[0, steps], np.c_[start, values]
      _band(ax, steps, 100 * values, label, marker="o", markersize=3)
    ax.set_title(name if name != "average" else "average over sets")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{key} (%)")
    ax.grid(alpha=0.3)
  axes.ravel()[0].legend(fontsize=7)
  fig.suptitle("Held-out accuracy during training (mean over seeds, band = 95% CI)")
  _save(plt, fig, path)


def _student_value(doc: dict, name: str, key: str) -> float:
  if name == "average":
    return float(np.mean([b[key] for b in doc["benchmarks"].values()]))
  return doc["benchmarks"][name][key]


def line_figure(collected: dict, path: str, labels: Sequence[str], keys: Sequence[str],
                title: str, ylabel: str, scale: float = 1.0, window: int = 1):
  """One panel per metric key, one line per method that logged it."""
  runs = collected["runs"]
  plt, fig, axes = _figure(1, len(keys))
  for ax, key in zip(axes.ravel(), keys):
    for label in labels:
      if label in runs:
        steps, values = series(runs[label], key, window)
        if values.size and np.nanmax(np.abs(values)) > 0:
          _band(ax, steps + 1, scale * values, label)
    ax.set_title(key)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(title)
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
    ax.plot(levels + offset, [y[x == v].mean() for v in levels], marker=marker, markersize=8,
            linewidth=2, label=f"{kind.upper()} mean per original accuracy")
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
