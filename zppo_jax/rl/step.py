"""One RL step, as `../shared/ZPPO.md` describes it; which stages run, and on which groups,
is read from the method's entry (`rl/methods.py`):

  questions      new questions + questions replayed from the buffer (`stages.questions`)
  roll_out       the student samples G completions per question, graded (`rollouts`)
  teacher_pass   the teacher answers the hard ones (every one, for methods that train on its
                 responses); solved = at least one correct response
  buffer         admit / revisit / graduate / evict (`replay_buffer.update`)
  reformulate    BCQ and NCQ prompts for the hard questions; the student rolls out on them
  update         groups -> rows -> the jitted train step (`Learner.update`)

and the step's metrics. The step returns the new buffer and what it logged; the caller owns
the loop, checkpoints and evaluation.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from zppo_jax import compilation
from zppo_jax.rl import metrics as metrics_lib
from zppo_jax.rl import replay_buffer, rewards, rollouts, stages
from zppo_jax.rl.methods import Method
from zppo_jax.rl.rollouts import ORIGINAL, Group


@dataclasses.dataclass(frozen=True)
class StepOutput:
  buffer: replay_buffer.BufferState
  metrics: dict
  groups: list[Group]            # the question groups, then the BCQ/NCQ groups
  reformulations: list[dict]     # one record per BCQ/NCQ group (reformulations.jsonl)


class _Laps:
  """`time/<stage>` seconds between calls."""

  def __init__(self):
    self.times, self._last = {}, time.perf_counter()

  def __call__(self, name: str):
    now = time.perf_counter()
    self.times[f"time/{name}"] = now - self._last
    self._last = now


def rl_step(config, method: Method, policies, learner, data_iter,
            buffer: replay_buffer.BufferState, step: int, *, prompt_limit: int,
            shapes: dict[str, dict]) -> StepOutput:
  """Step `step` of the run `config` (its slices go to each stage): samples with the
  learner's current params, trains them (`learner.update`), and returns the new buffer."""
  lap, graded = _Laps(), rewards.TALLY.snapshot()
  tok, seed = policies.tokenizer, config.seed
  rollout_cfg, reward_cfg = config.rollout, config.reward
  params = learner.sampling_params()

  def roll_out(items, stage_seed, shape):
    return rollouts.roll_out(policies.sampler, params, tok, rollout_cfg, reward_cfg, items,
                             stage_seed, shape, config.distill.student_rollouts,
                             policies.images)

  def fit(pairs):
    return stages.fit_questions(tok, rollout_cfg, config.data.long_questions, pairs,
                                prompt_limit)

  batch, too_long = fit(stages.questions(config.buffer, seed, data_iter, buffer, step))
  groups = roll_out([(ORIGINAL, q, q.question, r) for q, r in batch],
                    rollouts.derive_seed(seed, step, 2), shapes["questions"])
  rounds, dynamic = 0, config.dynamic_sampling
  while (dynamic.enabled and rounds < dynamic.max_rounds
         and sum(not g.flat for g in groups) < config.questions_per_step):
    rounds += 1
    fitted, more = fit([(q, False) for q in stages.next_batch(data_iter)])
    too_long += more
    groups += roll_out([(ORIGINAL, q, q.question, False) for q, _ in fitted],
                       rollouts.derive_seed(seed, step, 2, rounds), shapes["questions"])
  lap("rollout")

  threshold = config.buffer.threshold
  hard = [g for g in groups if g.completions and g.accuracy < threshold]
  asked = groups if method.teacher_answers_all else hard
  solutions = rollouts.teacher_pass(
      policies.teacher_sampler, policies.teacher_params, tok, config.teacher, rollout_cfg,
      reward_cfg, [g.question for g in asked], rollouts.derive_seed(seed, step, 3),
      shapes["questions"], policies.images)
  lap("teacher")

  events = replay_buffer.Events()
  if config.buffer.enabled:
    buffer, events = replay_buffer.update(
        buffer, [(dataclasses.asdict(g.question), g.accuracy) for g in groups if g.completions],
        step, threshold=threshold, capacity=config.buffer.capacity)

  extra_groups, unbuilt = [], 0
  if method.reformulates:
    rng = np.random.default_rng(rollouts.derive_seed(seed, step, 4))
    graduated = {e.id for e in events.graduated}
    reformulated, unbuilt = stages.reformulate(
        config.zppo, [g for g in hard if g.question.id not in graduated], solutions, rng,
        tok.count_tokens)
    extra_groups = roll_out([(kind, q, user, False) for kind, q, user in reformulated],
                            rollouts.derive_seed(seed, step, 5), shapes["reformulated"])
  lap("reformulated_rollout")

  if method.teacher_in_group:
    groups = stages.teacher_in_group(groups, solutions, tok, rollout_cfg.enable_thinking,
                                     reward_cfg)
  if method.teacher_answers_all:
    train_groups = stages.distill_groups(config.distill.correct_only, groups, solutions, tok,
                                         rollout_cfg.enable_thinking)
  else:
    train_groups = groups + extra_groups
  flat = [g.flat for g in train_groups]
  if dynamic.enabled:
    train_groups = [g for g in train_groups if not g.flat]
  train_metrics = learner.update(train_groups)
  lap("train")

  out = metrics_lib.step_metrics(groups, extra_groups, hard, solutions, events, buffer, flat,
                                 rollout_cfg.group_size)
  out.update(train_metrics)
  out.update(lap.times)
  out["reformulate/skipped"], out["questions/too_long"] = unbuilt, too_long
  out.update(compilation.COUNTS.metrics())  # cumulative: flat once every shape is seen
  out["time/step"] = sum(lap.times.values())
  graded = {k: v - graded[k] for k, v in rewards.TALLY.snapshot().items()}
  out["time/grade"] = graded["seconds"]  # within the rollout stages' times
  out["grade/symbolic"], out["grade/timeouts"] = graded["symbolic"], graded["timeouts"]
  sampled = sum(len(t) for g in groups + extra_groups for t in g.completions)
  out["throughput/sampled_tokens_per_s"] = sampled / max(
      lap.times["time/rollout"] + lap.times["time/reformulated_rollout"], 1e-9)
  out["dynamic_sampling/rounds"] = rounds
  return StepOutput(buffer, out, groups + extra_groups,
                    metrics_lib.reformulations(groups, extra_groups, solutions))
