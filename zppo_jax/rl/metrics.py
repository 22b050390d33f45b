"""What one step logs of its groups, the buffer and the update: `metrics.jsonl` scalars, the
progress line, rollout samples and the reformulation records (names stable across
versions: `reward/*`, `buffer/*`, `bcq/*`, `ncq/*`, ...)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from zppo_jax.rl import replay_buffer
from zppo_jax.rl.rollouts import BCQ, NCQ, Group


def mean(arrays) -> float:
  """The mean of all values of a list of arrays (nan when there are none)."""
  values = [np.asarray(a, np.float64).ravel() for a in arrays]
  values = [v for v in values if v.size]
  return float(np.concatenate(values).mean()) if values else float("nan")


def step_metrics(groups: Sequence[Group], extra_groups: Sequence[Group], hard: Sequence[Group],
                 solutions: dict, events: replay_buffer.Events,
                 buffer: replay_buffer.BufferState, flat: Sequence[bool],
                 group_size: int) -> dict:
  """Scalars of a step's question groups (`groups`), BCQ/NCQ groups (`extra_groups`), hard
  groups and teacher solutions, buffer events and state; `flat`: which trained groups had
  zero variance."""
  out = {
      "reward/mean": mean([x.rewards for x in groups]),
      "reward/new": mean([x.rewards for x in groups if not x.replayed]),
      "reward/replay": mean([x.rewards for x in groups if x.replayed]),
      "questions/new": sum(not x.replayed for x in groups),
      "questions/replayed": sum(x.replayed for x in groups),
      "questions/hard": len(hard),
      "groups/all_wrong": sum(bool(len(x.rewards) and np.all(x.rewards < 1.0))
                              for x in [*groups, *extra_groups]),
      "groups/all_right": sum(bool(len(x.rewards) and np.all(x.rewards >= 1.0))
                              for x in [*groups, *extra_groups]),
      "zero_advantage_fraction": float(np.mean(flat)) if len(flat) else 0.0,
      "teacher/solved": sum(bool(solutions.get(x.question.id)) for x in hard),
      "response/length": mean([[len(t) for t in x.completions] for x in groups]),
      "response/truncated": mean([x.truncated for x in groups]),
      # mean -log p of the sampled tokens: an unbiased estimate of the policy's entropy
      "rollout/entropy": mean([-np.asarray(lp) for x in groups
                               for lp, off in zip(x.logprobs, x.off_policy) if not off]),
      "buffer/size": len(buffer),
      "buffer/admitted": len(events.admitted),
      "buffer/graduated": len(events.graduated),
      "buffer/evicted": len(events.evicted),
  }
  for kind in (BCQ, NCQ):
    mine = [x for x in extra_groups if x.kind == kind]
    out[f"{kind}/count"] = len(mine)
    out[f"{kind}/accuracy"] = mean([x.rewards for x in mine])
  everyone = buffer.entries + buffer.retired
  graduates = [e for e in buffer.retired if e.outcome == replay_buffer.GRADUATED]
  for key, n in replay_buffer.admission_counts(everyone, group_size).items():
    out[f"buffer/admitted_total/{key}"] = n
  for key, n in replay_buffer.admission_counts(graduates, group_size).items():
    out[f"buffer/graduated_total/{key}"] = n
  out["buffer/graduated_total"] = len(graduates)
  return out


def progress(m: dict) -> dict[str, str]:
  """The progress line's fields of a step's metrics."""
  return {"reward": f"{m['reward/mean']:.3f}", "buffer": f"{m['buffer/size']:d}",
          "adm/grad": f"{m['buffer/admitted']:d}/{m['buffer/graduated']:d}",
          "bcq": f"{m['bcq/accuracy']:.2f}", "ncq": f"{m['ncq/accuracy']:.2f}",
          # a collapse shows here first: entropy towards 0, every group flat
          "entropy": f"{m['rollout/entropy']:.3f}", "flat": f"{m['zero_advantage_fraction']:.2f}",
          "tok/s": f"{m['throughput/sampled_tokens_per_s']:.0f}"}


def samples(groups: Sequence[Group], decode, count: int) -> list[dict]:
  """The first response of each of the first `count` sampled groups, for samples.jsonl."""
  rows = []
  for group in groups[:count]:
    if not group.texts:
      continue
    rows.append({"kind": group.kind, "question_id": group.question.id,
                 "prompt": decode(group.prompt), "response": group.texts[0],
                 "reward": float(group.rewards[0]), "answer": group.question.answer})
  return rows


def reformulations(groups: Sequence[Group], extra_groups: Sequence[Group], solutions: dict
                   ) -> list[dict]:
  """One record per BCQ/NCQ group: its accuracy beside its question's (reformulations.jsonl)."""
  original = {x.question.id: x.accuracy for x in groups if x.completions}
  return [{"kind": x.kind, "question_id": x.question.id, "accuracy": x.accuracy,
           "original_accuracy": original[x.question.id],
           "teacher_solved": bool(solutions.get(x.question.id))}
          for x in extra_groups if x.completions]
