"""One step's stages between sampler calls (`zppo_jax/rl/step.py` runs them in order), each a
function of explicit inputs (its config slice) returning new values:

  questions        new questions from the data pipeline + questions replayed from the buffer
  fit_questions    those whose chat prompt fits (long ones skipped, or cut)
  reformulate      BCQ and NCQ prompts of the hard groups
  teacher_in_group a correct teacher response in place of a wrong rollout (GRPO + teacher)
  distill_groups   the teacher's responses as groups (off-policy distillation)
  train_rows       groups and advantages -> the rows the train step takes

and the fixed shapes of the step's sampler calls (`sample_shapes`, `prompt_limit`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from absl import logging

from zppo_jax import multihost
from zppo_jax.data.records import Question
from zppo_jax.data.tokenizer import GENERATION_PREFIX, Tokenizer
from zppo_jax.rl import batching, prompts, replay_buffer, rollouts
from zppo_jax.rl.rollouts import BCQ, NCQ, ORIGINAL, Group

LONG_QUESTIONS = ("skip", "cut")


def as_question(d: dict) -> Question:
  """A Question from its `dataclasses.asdict` form (the buffer's, a host gather's)."""
  return Question(**{**d, **{k: tuple(d.get(k, ())) for k in ("choices", "teacher_responses",
                                                               "images", "videos")}})


# ------------------------------------------------------------------------------ questions

def next_batch(data_iter) -> list[Question]:
  """The next global batch of new questions: each host reads its share, all hold all."""
  shares = multihost.allgather([dataclasses.asdict(q) for q in next(data_iter)])
  return [as_question(d) for share in shares for d in share]


def questions(buffer_cfg, seed: int, data_iter, buffer_state, step: int
              ) -> list[tuple[Question, bool]]:
  """This step's (question, replayed) pairs: a batch of new ones, then up to
  `buffer.replay_per_step` buffered ones not already in the batch."""
  new = next_batch(data_iter)
  out = [(q, False) for q in new]
  if buffer_cfg.enabled and buffer_cfg.replay_per_step:
    rng = np.random.default_rng(rollouts.derive_seed(seed, step, 1))
    replay = replay_buffer.sample(buffer_state, buffer_cfg.replay_per_step, rng,
                                  order=buffer_cfg.replay_order,
                                  exclude=frozenset(q.id for q in new))
    out += [(as_question(e.question), True) for e in replay]
  return out


def fit_questions(tok: Tokenizer, rollout_cfg, long_questions: str,
                  pairs: Sequence[tuple[Question, bool]], limit: int
                  ) -> tuple[list[tuple[Question, bool]], int]:
  """The (question, replayed) pairs whose chat prompt fits `limit` tokens, and how many did
  not: those are skipped, or with `long_questions="cut"` (`data.long_questions`) kept with the
  middle of the question replaced by prompts.ELISION (its beginning and its final ask
  survive)."""
  out, too_long = [], 0
  overhead = len(rollouts.prompt_ids(tok, rollout_cfg, [""])[0])
  room = limit - overhead - len(tok.encode(prompts.ELISION)) - 4  # 4: merges at the seams
  for q, replayed in pairs:
    if len(q.question) + overhead <= limit:  # a token holds at least one character
      out.append((q, replayed))
      continue
    # a huge question is cut in characters before it is tokenised (no 10M-token encodes)
    text = q.question if len(q.question) <= 64 * limit else (
        q.question[:32 * limit] + q.question[-32 * limit:])
    ids = tok.encode(text)
    if len(ids) + overhead <= limit:
      out.append((q, replayed))
      continue
    too_long += 1
    if long_questions == "cut" and room > 0:
      head, tail = room - room // 2, room // 2
      cut = tok.decode(ids[:head]) + prompts.ELISION + tok.decode(ids[len(ids) - tail:])
      out.append((dataclasses.replace(q, question=cut), replayed))
  if too_long:
    logging.warning("%d question(s) over rollout.max_prompt_tokens=%d tokens %s", too_long,
                    limit, "cut" if long_questions == "cut" else "skipped")
  return out, too_long


# ------------------------------------------------------------------------------ shapes

def prompt_limit(rollout_cfg, zppo_cfg, reformulates: bool, max_position_embeddings: int
                 ) -> int:
  """Tokens a question's chat prompt may take: `rollout.max_prompt_tokens`, or what the
  model's context leaves after `rollout.max_new_tokens`; a setting the model cannot hold
  is an error naming the fields."""
  limit = rollout_cfg.max_prompt_tokens or max_position_embeddings - rollout_cfg.max_new_tokens
  longest = max(limit, zppo_cfg.max_prompt_tokens if reformulates else 0)
  if limit < 1 or longest + rollout_cfg.max_new_tokens > max_position_embeddings:
    raise ValueError(
        f"config.rollout.max_prompt_tokens={rollout_cfg.max_prompt_tokens} (0: the model's "
        f"limit), config.zppo.max_prompt_tokens={zppo_cfg.max_prompt_tokens} and "
        f"config.rollout.max_new_tokens={rollout_cfg.max_new_tokens} do not fit the student's "
        f"max_position_embeddings={max_position_embeddings}")
  return limit


def sample_shapes(questions_per_step: int, buffer_cfg, zppo_cfg, reformulates: bool,
                  max_prompt_tokens: int, prompt_overhead: int, vision_tokens: int = 0
                  ) -> dict[str, dict]:
  """The shapes of the step's sampler calls, fixed by the config: prompt rows from two
  row buckets (half or all of the most a call can have: questions_per_step + replay_per_step
  questions, and for BCQ/NCQ prompts as many as the hard ones can make); prompt slots that
  hold `max_prompt_tokens` (rollout.max_prompt_tokens, when set; else the prompts' own
  length buckets), and for BCQ/NCQ prompts zppo.max_prompt_tokens plus the chat template's
  `prompt_overhead`; both with room for `vision_tokens` (config.vision.max_tokens, the most
  a question's images take). Varying counts then reuse a few compiled programs."""
  most = questions_per_step + (buffer_cfg.replay_per_step if buffer_cfg.enabled else 0)
  per_question = ((zppo_cfg.bcq_per_question if zppo_cfg.bcq else 0)
                  + (1 if zppo_cfg.ncq else 0)) if reformulates else 0
  row_buckets = lambda rows: tuple(sorted({max(1, rows // 2), rows}))
  # slots a multiple of 16, not the next power of two: 8192 BCQ/NCQ tokens and the chat
  # template took 16384 slots, a cache 1.6x the size (zppo_jax.aot's compile at 2B)
  fit = lambda n: -(-n // 16) * 16
  slots = fit(max_prompt_tokens + vision_tokens) if max_prompt_tokens else 0
  return {"questions": dict(rows=row_buckets(most), prompt_slots=slots),
          "reformulated": dict(rows=row_buckets(most * max(per_question, 1)),
                               prompt_slots=fit(zppo_cfg.max_prompt_tokens + prompt_overhead
                                                + vision_tokens))}


# ------------------------------------------------------------------------------ teacher in prompts

def reformulate(zppo_cfg, hard: Sequence[Group], solutions: dict[str, list[str]],
                rng: np.random.Generator, count_tokens
                ) -> tuple[list[tuple[str, Question, str]], int]:
  """(kind, question, user message) of the BCQ and NCQ prompts of the hard groups, and how
  many could not be built (`prompts.Unbuildable`: a question too long for the budget, no
  usable wrong rollout, ...), skipped with a warning.

  BCQ when the teacher solved x: its first correct response and one wrong student rollout
  (a different one for each of `bcq_per_question`). NCQ from the wrong rollouts: when the
  teacher could not solve x ("unsolved"), or for every hard question ("always")."""
  budget = prompts.Budget(zppo_cfg.max_prompt_tokens, zppo_cfg.max_candidate_tokens,
                          zppo_cfg.max_ncq_responses)
  out, skipped = [], 0

  def build(kind, q, make):
    nonlocal skipped
    try:
      out.append((kind, q, make()))
    except prompts.Unbuildable as e:
      skipped += 1
      logging.warning("skipped the %s prompt of question %s: %s", kind, q.id, e)

  for group in hard:
    q = group.question
    wrong = [t for t, r in zip(group.texts, group.rewards) if r < 1.0]
    solved = solutions.get(q.id, [])
    if zppo_cfg.bcq and solved and wrong:
      for i in rng.permutation(len(wrong))[:zppo_cfg.bcq_per_question]:
        build(BCQ, q, lambda: prompts.bcq(q.question, solved[0], wrong[i], rng, budget=budget,
                                          count_tokens=count_tokens))
    if zppo_cfg.ncq and wrong and (zppo_cfg.ncq_policy == "always" or not solved):
      build(NCQ, q, lambda: prompts.ncq(q.question, wrong, rng, budget=budget,
                                        count_tokens=count_tokens))
  return out, skipped


# ------------------------------------------------------------------------------ teacher responses

def completion_ids(tok: Tokenizer, response: str, enable_thinking: bool) -> list[int]:
  """A full assistant response as the tokens a sampler would have produced after the
  generation prompt (which already holds the generation prefix), ending the turn."""
  prefix = GENERATION_PREFIX[enable_thinking]
  body = response[len(prefix):] if response.startswith(prefix) else response
  return tok.encode(body) + [tok.im_end_id]


def teacher_in_group(groups: Sequence[Group], solutions: dict[str, list[str]],
                     tok: Tokenizer, enable_thinking: bool, reward_cfg) -> list[Group]:
  """GRPO + teacher response: the groups, with the teacher's first correct response in place
  of the last wrong rollout of each hard group it solved, flagged off-policy (see
  `losses.grpo`)."""
  swaps = {id(group): int(np.flatnonzero(group.rewards < 1.0)[-1])
           for group in groups
           if solutions.get(group.question.id) and np.any(group.rewards < 1.0)}
  swapped = [g for g in groups if id(g) in swaps]
  scores = iter(rollouts.grade([solutions[g.question.id][0] for g in swapped],  # one gather
                               [g.question.answer for g in swapped], reward_cfg))
  out = []
  for group in groups:
    if id(group) not in swaps:
      out.append(group)
      continue
    i, response = swaps[id(group)], solutions[group.question.id][0]
    ids = completion_ids(tok, response, enable_thinking)
    put = lambda values, value: [value if j == i else v for j, v in enumerate(values)]
    out.append(dataclasses.replace(
        group, completions=put(group.completions, ids),
        logprobs=put(group.logprobs, [0.0] * len(ids)), truncated=put(group.truncated, False),
        texts=put(group.texts, response),
        rewards=np.asarray(put(list(group.rewards), next(scores)), group.rewards.dtype),
        off_policy=np.asarray(put(list(group.off_policy), True), bool)))
  return out


def distill_groups(correct_only: bool, groups: Sequence[Group], solutions, tok: Tokenizer,
                   enable_thinking: bool) -> list[Group]:
  """Off-policy distillation: one group per question of its teacher responses (graded
  correct ones when `distill.correct_only`), imitated by next-token NLL."""
  out = []
  for group in groups:
    q = group.question
    responses = solutions.get(q.id) if correct_only else list(q.teacher_responses)
    if not responses:
      continue
    comps = [completion_ids(tok, r, enable_thinking) for r in responses]
    n = len(comps)
    out.append(Group(ORIGINAL, q, group.prompt, comps, [[0.0] * len(c) for c in comps],
                     [False] * n, list(responses), np.ones(n, np.float32), np.ones(n, bool),
                     vision=group.vision))
  return out


def train_rows(groups: Sequence[Group], advantages: Sequence[np.ndarray]) -> list[batching.Row]:
  """The groups' sequences with their advantages, as the train step takes them."""
  return [batching.Row(g.prompt, c, lp, float(a), bool(tr), bool(off), g.vision)
          for g, adv in zip(groups, advantages)
          for c, lp, tr, a, off in zip(g.completions, g.logprobs, g.truncated, adv, g.off_policy)]
