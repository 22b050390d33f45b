r"""A run's starting point in numbers: what the student can do before any RL step.

    python -m zppo_jax.testbed --config configs/tiny.py [--questions 128] [--output DIR]

On `--questions` training questions of the config's dataset, G rollouts each at the
rollout temperature (as the first step samples them):
  - accuracy by level (a synthetic id's `-L<k>`), and how per-question accuracies spread
    over 0/G ... G/G: RL learns only from questions between the ends;
  - the diagnostics of a run (README "Diagnostics"): entropy (mean -log p of the sampled
    tokens), the share of zero-variance groups, distinct responses per group;
  - on the hard questions (accuracy below buffer.threshold): how often the teacher solves
    them, and the student's accuracy on their BCQ and NCQ prompts beside its plain accuracy
    on the same questions: ZPPO assumes the reformulations are within reach;
and held-out accuracy (`config.eval`). Writes <output>/testbed.json and testbed.md.
"""

from __future__ import annotations

import json
import os
import re
from typing import Sequence

import numpy as np

LEVEL = re.compile(r"-L(\d+)(?:-|$)")


def level_of(question_id: str) -> str:
  """"L2" for a synthetic id ("arith-0-17-L2"), "all" for any other."""
  m = LEVEL.search(question_id)
  return f"L{m.group(1)}" if m else "all"


def spread(accuracies: Sequence[float], group_size: int) -> list[int]:
  """How many questions had 0, 1, ..., G correct of G: [G + 1] counts."""
  correct = np.rint(np.asarray(accuracies, np.float64) * group_size).astype(int)
  return np.bincount(correct, minlength=group_size + 1).tolist()


def by_level(ids: Sequence[str], accuracies: Sequence[float]) -> dict[str, dict]:
  """{level: {"questions": n, "accuracy": mean}} over the questions of each level."""
  out: dict[str, list[float]] = {}
  for qid, acc in zip(ids, accuracies):
    out.setdefault(level_of(qid), []).append(float(acc))
  return {k: {"questions": len(v), "accuracy": float(np.mean(v))} for k, v in sorted(out.items())}


def survey(config, num_questions: int, checkpoint: str = "") -> dict:
  """Every figure of the module docstring, for the config's student (or `checkpoint`)."""
  import jax
  import jax.numpy as jnp

  from zppo_jax import evaluate, evaluation, policies, sharding
  from zppo_jax.data import pipeline
  from zppo_jax.rl import rollouts, stages
  mesh, rules = sharding.from_config(config.mesh)
  model_config, params, _ = evaluate.load_policy(config, checkpoint, mesh, rules)
  held = policies.load_all(config, mesh, rules, model_config, params)
  params = jax.tree.map(lambda p: p.astype(jnp.dtype(config.train.compute_dtype)), params)
  source = pipeline.training_source(config.data, config.seed)
  if len(source) < num_questions:
    raise ValueError(f"--questions {num_questions}: the dataset has {len(source)} rows")
  questions = [stages.as_question(source[i][0]) for i in range(num_questions)]
  g, seed, tok = config.rollout.group_size, config.seed, held.tokenizer

  def roll_out(items, stage_seed):
    return rollouts.roll_out(held.sampler, params, tok, config.rollout, config.reward, items,
                             stage_seed, images=held.images)

  groups = []
  for start in range(0, num_questions, 32):  # sampler calls of a modest size
    groups += roll_out([(rollouts.ORIGINAL, q, q.question, False)
                        for q in questions[start:start + 32]], seed + start)
  accuracy = [x.accuracy for x in groups]
  hard = [x for x in groups if x.accuracy < config.buffer.threshold]
  solutions = rollouts.teacher_pass(held.teacher_sampler, held.teacher_params, tok,
                                    config.teacher, config.rollout, config.reward,
                                    [x.question for x in hard], seed + 1, images=held.images)
  rng = np.random.default_rng(seed)
  reformulated, _ = stages.reformulate(config.zppo, hard, solutions, rng, tok.count_tokens)
  extra = []
  for start in range(0, len(reformulated), 32):
    extra += roll_out([(kind, q, user, False) for kind, q, user in reformulated[start:start + 32]],
                      seed + 2 + start)
  plain = {x.question.id: x.accuracy for x in groups}
  out = {
      "questions": num_questions, "group_size": g,
      "accuracy": float(np.mean(accuracy)), "by_level": by_level(
          [x.question.id for x in groups], accuracy),
      "spread": spread(accuracy, g),
      "entropy": float(np.mean(np.concatenate([-np.asarray(lp) for x in groups
                                               for lp in x.logprobs]))),
      "zero_variance_groups": float(np.mean([np.ptp(x.rewards) == 0 for x in groups])),
      "distinct_responses": float(np.mean([len(set(x.texts)) for x in groups])),
      "hard": len(hard),
      "hard_at_zero": sum(x.accuracy == 0 for x in hard),
      "teacher_solved_hard": sum(bool(solutions.get(x.question.id)) for x in hard),
      "teacher_solved_at_zero": sum(bool(solutions.get(x.question.id)) for x in hard
                                    if x.accuracy == 0),
  }
  for kind in (rollouts.BCQ, rollouts.NCQ):
    mine = [x for x in extra if x.kind == kind]
    out[kind] = {"prompts": len(mine),
                 "accuracy": float(np.mean([x.accuracy for x in mine])) if mine else None,
                 "plain_accuracy": (float(np.mean([plain[x.question.id] for x in mine]))
                                    if mine else None)}
  out["per_question"] = [{"id": x.question.id, "question": x.question.question,
                          "accuracy": x.accuracy,
                          "teacher_solved": bool(solutions.get(x.question.id))} for x in groups]
  if config.eval.benchmarks:
    evaluator = evaluation.Evaluator.from_config(config, tok, held.sampler, images=held.images)
    out["eval"] = evaluation.metrics(evaluator.run(params, seed), config.eval.pass_at)
  return out


def markdown(s: dict, title: str) -> str:
  pct = lambda x: "–" if x is None else f"{100 * x:.1f}%"
  g = s["group_size"]
  lines = [f"# {title}", "",
           f"{s['questions']} training questions, {g} rollouts each.", "",
           "| level | questions | accuracy |", "|---|---|---|"]
  lines += [f"| {k} | {v['questions']} | {pct(v['accuracy'])} |" for k, v in s["by_level"].items()]
  lines += [f"| all | {s['questions']} | {pct(s['accuracy'])} |", "",
            "| correct of " + str(g) + " | " + " | ".join(map(str, range(g + 1))) + " |",
            "|---" * (g + 2) + "|",
            "| questions | " + " | ".join(map(str, s["spread"])) + " |", "",
            f"- entropy (mean -log p of sampled tokens): {s['entropy']:.3f} nats/token",
            f"- zero-variance groups: {pct(s['zero_variance_groups'])}",
            f"- distinct responses per group: {s['distinct_responses']:.2f} of {g}",
            f"- hard questions (below the buffer threshold): {s['hard']}, of which "
            f"{s['hard_at_zero']} at 0/{g}; the teacher solves {s['teacher_solved_hard']} "
            f"of them ({s['teacher_solved_at_zero']} of those at 0/{g})"]
  for kind in ("bcq", "ncq"):
    k = s[kind]
    lines.append(f"- {kind.upper()}: {k['prompts']} prompts, accuracy {pct(k['accuracy'])} "
                 f"(the same questions asked plainly: {pct(k['plain_accuracy'])})")
  for key, value in sorted(s.get("eval", {}).items()):
    if "/avg@" in key:
      lines.append(f"- {key}: {pct(value)}")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  from zppo_jax import multihost
  multihost.initialize("auto", None, None, None)
  config = _CONFIG.value
  s = survey(config, _QUESTIONS.value, _CHECKPOINT.value)
  policy = _CHECKPOINT.value or config.student.path
  if os.path.abspath(policy).startswith(os.getcwd() + os.sep):
    policy = os.path.relpath(policy)
  title = f"Starting point: {policy} (teacher: {config.teacher.source})"
  os.makedirs(_OUTPUT.value, exist_ok=True)
  with open(os.path.join(_OUTPUT.value, "testbed.json"), "w") as f:
    json.dump(s, f, indent=1)
  with open(os.path.join(_OUTPUT.value, "testbed.md"), "w") as f:
    f.write(markdown(s, title))
  print(markdown(s, title))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  from zppo_jax import run_config
  _CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file (:arg).")
  _CHECKPOINT = flags.DEFINE_string("checkpoint", "", "A Hugging Face checkpoint directory or "
                                    "a run's workdir; empty: the config's student.")
  _QUESTIONS = flags.DEFINE_integer("questions", 128, "Training questions to sample.")
  _OUTPUT = flags.DEFINE_string("output", "testbed", "Where testbed.json and .md go.")
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=run_config.parse_flags)
