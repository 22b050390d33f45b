"""User messages in, graded groups out: the group record, the chat prompt, the sampler and
the reward, shared by training (rollouts of questions, BCQ and NCQ prompts, teacher
responses) and evaluation. Each function takes the config slice it reads."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from zppo_jax import multihost
from zppo_jax.data.records import Question
from zppo_jax.data.tokenizer import GENERATION_PREFIX, Tokenizer
from zppo_jax.rl import rewards
from zppo_jax.sampler import LENGTH

ORIGINAL, BCQ, NCQ = "original", "bcq", "ncq"   # what a group's prompt is


@dataclasses.dataclass(frozen=True)
class Group:
  """G sequences sharing one prompt: the unit of group-relative advantages."""
  kind: str                       # ORIGINAL | BCQ | NCQ
  question: Question
  prompt: list[int]
  completions: list[list[int]]
  logprobs: list[list[float]]     # sampler log-probs of the completion tokens
  truncated: list[bool]
  texts: list[str]                # as graded: generation prefix + completion
  rewards: np.ndarray             # [G]
  off_policy: np.ndarray          # [G] bool: a teacher response standing in the group
  replayed: bool = False
  vision: tuple | None = None     # the prompt's images: (pixel_values, grids), or None

  @property
  def accuracy(self) -> float:
    return float(np.mean(self.rewards >= 1.0))

  @property
  def flat(self) -> bool:
    """Zero-variance group: no learning signal."""
    return bool(len(self.rewards)) and bool(np.all(self.rewards == self.rewards[0]))


def derive_seed(*parts: int) -> int:
  """A 32-bit seed from (run seed, step, stage, ...): every host draws the same."""
  return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def prompt_ids(tok: Tokenizer, rollout_cfg, users: Sequence[str],
               visions: Sequence[str] | None = None) -> list[list[int]]:
  """Token ids of each user message in the chat template (`config.rollout`: system prompt,
  thinking on or off), ending with the generation prompt; `visions`: each message's image
  placeholders, put before it."""
  return [tok.encode_prompt(user, rollout_cfg.system or None, rollout_cfg.enable_thinking,
                            vision)
          for user, vision in zip(users, visions or [""] * len(users))]


def vision_inputs(images, questions: Sequence[Question]) -> tuple[list[str], list | None]:
  """Each question's image / video placeholders and sampler entry ((pixel_values, grids) or
  None) from its references; (["", ...], None) when none has any."""
  if not any(q.images or q.videos for q in questions):
    return [""] * len(questions), None
  if images is None:
    q = next(q for q in questions if q.images or q.videos)
    raise ValueError(f"question {q.id!r} has images / videos {list(q.images + q.videos)[:2]}, "
                     "but config.vision.enabled is False: the models run without their "
                     "vision towers")
  pairs = [images(q.images, q.videos) for q in questions]
  return [text for text, _ in pairs], [entry for _, entry in pairs]


def sample(sampler, params, tokenizer, prompts, *, enable_thinking: bool, num_samples: int,
           seed: int, max_new_tokens: int, temperature: float, top_p: float, rows=0,
           prompt_slots=0, images=None):
  """(Completions, texts): `num_samples` completions of each prompt, prompt-major; each text
  is the response as graded, the generation prefix (e.g. "<think>\\n") included. `rows` and
  `prompt_slots`: the call's fixed shape (`Sampler.generate`); `images`: per prompt, its
  sampler entry or None."""
  out = sampler.generate(params, prompts, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_p=top_p,
                         num_samples=num_samples, seed=seed,
                         stop_token_ids=tokenizer.stop_token_ids, rows=rows,
                         prompt_slots=prompt_slots, images=images)
  prefix = GENERATION_PREFIX[enable_thinking]
  texts = [prefix + t for t in tokenizer.decode_batch(
      [c[:-1] if r != LENGTH else c for c, r in zip(out.tokens, out.finish_reason)])]
  return out, texts


def grade(texts: Sequence[str], answers: Sequence[str], reward_cfg) -> np.ndarray:
  """Rewards of (text, answer) pairs under `config.reward`, each graded by one host and
  gathered: the work is split, and a time-bounded check cannot come out differently on two
  hosts."""
  grader = rewards.Grader.from_config(reward_cfg)
  def mine(pairs):
    return grader.rewards([t for t, _ in pairs], [a for _, a in pairs]).tolist()
  return np.asarray(multihost.map_shared(mine, list(zip(texts, answers))), np.float32)


def call_shape(shape: dict | None, num_prompts: int) -> dict:
  """`Sampler.generate`'s rows and prompt_slots for a call of `num_prompts` in `shape`
  (one of `stages.sample_shapes`)."""
  if not shape:
    return {}
  rows = [r for r in shape["rows"] if r >= num_prompts]
  return {"rows": rows[0] if rows else 0, "prompt_slots": shape.get("prompt_slots", 0)}


def roll_out(sampler, params, tok: Tokenizer, rollout_cfg, reward_cfg,
             items: Sequence[tuple[str, Question, str, bool]], seed: int,
             shape: dict | None = None, student_rollouts: bool = True, images=None
             ) -> list[Group]:
  """G student completions of each (kind, question, user message, replayed), graded against
  the question's answer, sampled in the fixed `shape` (`stages.sample_shapes`). A question's
  images (`images`: a `data.images.PromptImages`) come before every prompt made of it: the
  question's own, its BCQ and NCQ. Without `student_rollouts` (pure SFT), groups carry only
  their prompt."""
  if not items:
    return []
  g = rollout_cfg.group_size
  visions, entries = vision_inputs(images, [q for _, q, _, _ in items])
  ids = prompt_ids(tok, rollout_cfg, [user for _, _, user, _ in items], visions)
  vision = entries or [None] * len(items)   # per group: its prompt's images, or None
  if not student_rollouts:
    return [Group(kind, q, p, [], [], [], [], np.zeros(0, np.float32), np.zeros(0, bool), rep,
                  entry)
            for (kind, q, _, rep), p, entry in zip(items, ids, vision)]
  out, texts = sample(sampler, params, tok, ids, enable_thinking=rollout_cfg.enable_thinking,
                      num_samples=g, seed=seed, max_new_tokens=rollout_cfg.max_new_tokens,
                      temperature=rollout_cfg.temperature, top_p=rollout_cfg.top_p,
                      images=entries,
                      **call_shape(shape, len(items)))
  scores = grade(texts, [q.answer for _, q, _, _ in items for _ in range(g)], reward_cfg)
  groups = []
  for i, (kind, q, _, replayed) in enumerate(items):
    rows = slice(i * g, (i + 1) * g)
    groups.append(Group(kind, q, ids[i], out.tokens[rows], out.logprobs[rows],
                        [r == LENGTH for r in out.finish_reason[rows]], texts[rows],
                        scores[rows], np.zeros(g, bool), replayed, vision[i]))
  return groups


def teacher_pass(sampler, params, tok: Tokenizer, teacher_cfg, rollout_cfg, reward_cfg,
                 hard: Sequence[Question], seed: int, shape: dict | None = None, images=None
                 ) -> dict[str, list[str]]:
  """The teacher's *correct* responses to each hard question (empty: it cannot solve it):
  the dataset's (`teacher.source="dataset"`), or sampled from the teacher model in the fixed
  `shape` (`stages.sample_shapes`), seeing the question's images as the student does."""
  if teacher_cfg.source == "none" or not hard:
    return {}
  if teacher_cfg.source == "dataset":
    responses = {q.id: list(q.teacher_responses) for q in hard}
  else:
    visions, entries = vision_inputs(images, hard)
    ids = prompt_ids(tok, rollout_cfg, [q.question for q in hard], visions)
    n = teacher_cfg.num_rollouts
    _, texts = sample(sampler, params, tok, ids, enable_thinking=rollout_cfg.enable_thinking,
                      num_samples=n, seed=seed, max_new_tokens=teacher_cfg.max_new_tokens,
                      temperature=teacher_cfg.temperature, top_p=rollout_cfg.top_p,
                      images=entries, **call_shape(shape, len(hard)))
    responses = {q.id: texts[i * n:(i + 1) * n] for i, q in enumerate(hard)}
  pairs = [(r, q.answer) for q in hard for r in responses[q.id]]
  correct = iter(grade([r for r, _ in pairs], [a for _, a in pairs], reward_cfg) >= 1.0)
  return {q.id: [r for r in responses[q.id] if next(correct)] for q in hard}
