"""Held-out evaluation, the library: benchmark sets through the in-process sampler, graded by
`rewards` (the trainer's `eval.every`, and the `zppo_jax.evaluate` command).

Each question of each set in `eval.benchmarks` (specs of `data.benchmarks`) is asked `eval.k`
times in the chat template, sampled at `eval.temperature`. A set's accuracy is avg@k (the
mean correctness of all k samples: the paper's figure) and pass@j for j in `eval.pass_at` and
k (unbiased estimator from the k samples).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Sequence

import jax
import numpy as np

from zppo_jax.data import benchmarks
from zppo_jax.data.records import Question
from zppo_jax.rl import rollouts
from zppo_jax.sampler import LENGTH


def pass_at_k(n: int, c: int, k: int) -> float:
  """P(at least one of k samples drawn without replacement from n, c of them correct, is
  correct) = 1 - C(n-c, k) / C(n, k) (the unbiased estimator of Chen et al., 2021)."""
  if not 0 < k <= n:
    raise ValueError(f"pass@{k} needs 1 <= k <= n samples, n = {n}")
  if n - c < k:
    return 1.0
  return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def accuracy(correct: np.ndarray, pass_at: Sequence[int] = ()) -> dict[str, float]:
  """avg@n and pass@j (j in `pass_at` and n) of a [questions, n] boolean array."""
  q, n = correct.shape
  counts = correct.sum(axis=1)
  out = {f"avg@{n}": float(correct.mean()) if q else float("nan")}
  for k in sorted(set(pass_at) | {n}):
    out[f"pass@{k}"] = float(np.mean([pass_at_k(n, int(c), k) for c in counts])) if q else \
        float("nan")
  return out


@dataclasses.dataclass
class SetResult:
  name: str
  source: str
  questions: list[Question]
  correct: np.ndarray          # [questions, k] bool
  lengths: np.ndarray          # [questions, k] completion tokens
  truncated: np.ndarray        # [questions, k] bool: hit max_new_tokens

  def summary(self, pass_at: Sequence[int]) -> dict:
    return {"source": self.source, "questions": len(self.questions),
            **accuracy(self.correct, pass_at),
            "response_length": float(self.lengths.mean()) if self.lengths.size else 0.0,
            "truncated": float(self.truncated.mean()) if self.truncated.size else 0.0}


class Evaluator:
  """The benchmark sets of `eval_cfg` (`config.eval`, loaded once), evaluated on any params;
  prompts as `rollout_cfg` builds them (with their questions' images through `images`, a
  `data.images.PromptImages`), graded under `reward_cfg`."""

  def __init__(self, eval_cfg, rollout_cfg, reward_cfg, tokenizer, sampler, *,
               level_weights=(0.3, 0.3, 0.25, 0.15), tfds_data_dir: str = "", images=None):
    self.eval_cfg, self.rollout_cfg, self.reward_cfg = eval_cfg, rollout_cfg, reward_cfg
    self.tokenizer, self.sampler, self.images = tokenizer, sampler, images
    if eval_cfg.k < 1 or any(not 1 <= j <= eval_cfg.k for j in eval_cfg.pass_at):
      raise ValueError(f"config.eval.k must be >= 1 and config.eval.pass_at within [1, k]; "
                       f"got k={eval_cfg.k}, pass_at={tuple(eval_cfg.pass_at)}")
    if eval_cfg.batch_size < 1:
      raise ValueError(f"config.eval.batch_size must be >= 1, got {eval_cfg.batch_size}")
    specs = [benchmarks.parse_spec(s) for s in eval_cfg.benchmarks]
    names = [b.name for b in specs]
    if len(set(names)) != len(names):
      raise ValueError(f"config.eval.benchmarks: names must differ, got {names}")
    self.sets = [(b, benchmarks.load(b, level_weights=level_weights,
                                     tfds_data_dir=tfds_data_dir)) for b in specs]
    for b, qs in self.sets:
      if not qs:
        raise ValueError(f"benchmark {b.name} ({b.source}) has no questions")

  @classmethod
  def from_config(cls, config, tokenizer, sampler, images=None) -> "Evaluator":
    """The evaluator of a run config (its eval, rollout, reward and data slices)."""
    return cls(config.eval, config.rollout, config.reward, tokenizer, sampler,
               level_weights=config.data.level_weights, tfds_data_dir=config.data.tfds_data_dir,
               images=images)

  @property
  def max_new_tokens(self) -> int:
    return self.eval_cfg.max_new_tokens or self.rollout_cfg.max_new_tokens

  def _batches(self, i: int):
    """(start, questions, prompt ids, sampler images or None) of each sampler call on set i."""
    size, qs = self.eval_cfg.batch_size, self.sets[i][1]
    for start in range(0, len(qs), size):
      chunk = qs[start:start + size]
      visions, entries = rollouts.vision_inputs(self.images, chunk)
      yield start, chunk, rollouts.prompt_ids(self.tokenizer, self.rollout_cfg,
                                              [q.question for q in chunk], visions), entries

  def precompile(self, params) -> None:
    """Builds the sampler programs of every call `run` makes (the sets are known)."""
    eval_cfg, new = self.eval_cfg, self.max_new_tokens
    sizes = {(len(ids), max(map(len, ids))) for i in range(len(self.sets))
             for _, _, ids, _ in self._batches(i)}
    shapes = {self.sampler.shapes(n, length, new): (n, length) for n, length in sizes}
    for n, length in shapes.values():
      self.sampler.precompile(params, n, length, max_new_tokens=new,
                              temperature=eval_cfg.temperature, top_p=eval_cfg.top_p,
                              num_samples=eval_cfg.k,
                              stop_token_ids=self.tokenizer.stop_token_ids)

  def run(self, params, seed: int) -> list[SetResult]:
    eval_cfg, tok, k = self.eval_cfg, self.tokenizer, self.eval_cfg.k
    out = []
    for i, (bench, qs) in enumerate(self.sets):
      correct, lengths, truncated = [], [], []
      for start, chunk, ids, entries in self._batches(i):
        done, texts = rollouts.sample(
            self.sampler, params, tok, ids, enable_thinking=self.rollout_cfg.enable_thinking,
            num_samples=k, seed=rollouts.derive_seed(seed, i, start),
            max_new_tokens=self.max_new_tokens, temperature=eval_cfg.temperature,
            top_p=eval_cfg.top_p, images=entries)
        scores = rollouts.grade(texts, [q.answer for q in chunk for _ in range(k)],
                                self.reward_cfg)
        correct.append((scores >= 1.0).reshape(len(chunk), k))
        lengths.append(np.asarray([len(t) for t in done.tokens]).reshape(len(chunk), k))
        truncated.append(np.asarray([r == LENGTH for r in done.finish_reason]
                                    ).reshape(len(chunk), k))
      out.append(SetResult(bench.name, bench.source, qs, np.concatenate(correct),
                           np.concatenate(lengths), np.concatenate(truncated)))
    return out


def metrics(results: Sequence[SetResult], pass_at: Sequence[int]) -> dict[str, float]:
  """Flat `eval/<set>/<metric>` scalars (for metrics.jsonl and TensorBoard), and
  `eval/average/avg@k`: the unweighted mean over sets, like the paper's average column."""
  out = {}
  for r in results:
    for key, value in r.summary(pass_at).items():
      if key != "source":
        out[f"eval/{r.name}/{key}"] = value
  if results:
    k = results[0].correct.shape[1]
    out[f"eval/average/avg@{k}"] = float(np.mean([r.correct.mean() for r in results]))
  return out


def markdown(results: Sequence[SetResult], pass_at: Sequence[int], title: str = "") -> str:
  """A table: one row per set, then the average over sets."""
  rows = [(r.name, r.summary(pass_at)) for r in results]
  keys = [k for k in rows[0][1] if k.startswith(("avg@", "pass@"))]
  head = ["benchmark", "questions", *keys, "mean length (tokens)", "truncated"]
  lines = ([f"## {title}", ""] if title else []) + [
      "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, s in rows:
    lines.append(f"| {name} | {s['questions']} | "
                 + " | ".join(f"{100 * s[k]:.1f}" for k in keys)
                 + f" | {s['response_length']:.1f} | {100 * s['truncated']:.1f}% |")
  means = [np.mean([s[k] for _, s in rows]) for k in keys]
  lines.append("| **average** | | " + " | ".join(f"**{100 * m:.1f}**" for m in means) + " | | |")
  return "\n".join(lines) + "\n\nAccuracies in percent.\n"


def write(results: Sequence[SetResult], directory: str, config, *, title: str = "",
          stem: str = "eval", extra: dict | None = None) -> tuple[str, str]:
  """`<stem>.json` (settings, per-set summary, per-question correct counts) and `<stem>.md`,
  each written atomically; process 0 only; `config`'s eval and rollout slices are the
  settings. Returns their paths."""
  eval_cfg = config.eval
  doc = {"settings": {"k": eval_cfg.k, "temperature": eval_cfg.temperature,
                      "pass_at": list(eval_cfg.pass_at),
                      "max_new_tokens": eval_cfg.max_new_tokens or config.rollout.max_new_tokens,
                      "enable_thinking": config.rollout.enable_thinking},
         **(extra or {}),
         "benchmarks": {r.name: {**r.summary(eval_cfg.pass_at), "per_question": [
             {"id": q.id, "answer": q.answer, "correct": int(c.sum())}
             for q, c in zip(r.questions, r.correct)]} for r in results}}
  paths = os.path.join(directory, f"{stem}.json"), os.path.join(directory, f"{stem}.md")
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    for path, text in zip(paths, (json.dumps(doc, indent=1), markdown(results, eval_cfg.pass_at,
                                                                      title))):
      with open(path + ".tmp", "w") as f:
        f.write(text)
      os.replace(path + ".tmp", path)
  return paths
