r"""ZPPO's question reformulations: BCQ and NCQ prompts, as pure functions of their inputs.

BCQ (Binary Candidate-included Question): the question, an instruction, then two anonymised
candidates in random order, one correct (the teacher's) and one wrong (the student's).
NCQ (Negative Candidate-included Question): the question, an instruction, then the student's
wrong responses, so that it can see their shared failure mode.

Nothing in a prompt says where a candidate came from or which one is right: candidates are
"Response A", "Response B", ... in an order drawn from the step's RNG. Token budgets are
counted with `count_tokens` (the trainer passes its tokenizer's; the default, 4 characters
a token, is an estimate): a long candidate keeps its beginning and its final answer, and
NCQ drops responses that no longer fit.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

import numpy as np

from zppo_jax import rewards

BCQ_INSTRUCTION = ("Here are two responses to the question above. One is correct and the "
                   "other is wrong. Use them as references to help you solve the problem.")
NCQ_INSTRUCTION = ("Below are incorrect reasoning processes for the question above. Find "
                   "where they go wrong, then solve the problem correctly.")
TEMPLATE = "{question}\n\n{instruction}\n\n{candidates}"
CANDIDATE = "### Response {label}\n{response}"
ELISION = "\n[...]\n"


def approx_tokens(text: str) -> int:
  return len(text) // 4 + 1


@dataclasses.dataclass(frozen=True)
class Budget:
  """Token limits of a reformulated prompt (config fields `bcq`/`ncq` of the trainer)."""
  max_prompt_tokens: int = 4096      # the whole prompt, question and instruction included
  max_candidate_tokens: int = 1536   # each candidate response
  max_responses: int = 4             # NCQ: wrong responses shown at most


def _strip_think(response: str) -> str:
  """Candidates are quoted inside a user turn: their think tags would read as the format's
  own markers, so only their text is kept."""
  return re.sub(r"</?think>", "", response).strip()


def _final_part(response: str) -> str:
  r"""The end of a response that states its answer: from the last `\boxed` line, or the text
  after `</think>`, or the last line."""
  box = response.rfind("\\boxed")
  if box >= 0:
    return response[response.rfind("\n", 0, box) + 1:]
  close = response.rfind(rewards.THINK_CLOSE)
  if close >= 0:
    return response[close + len(rewards.THINK_CLOSE):]
  return response[response.rfind("\n") + 1:]


def _fit(text: str, max_tokens: int, count_tokens, from_end: bool = False) -> str:
  """The longest prefix (or suffix) of text within max_tokens, by bisection on its length."""
  lo, hi = 0, len(text)
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if count_tokens(text[len(text) - mid:] if from_end else text[:mid]) <= max_tokens:
      lo = mid
    else:
      hi = mid - 1
  return text[len(text) - lo:] if from_end else text[:lo]


def truncate(response: str, max_tokens: int,
             count_tokens: Callable[[str], int] = approx_tokens) -> str:
  """`response` within `max_tokens`: its beginning, an elision mark, and its final answer
  (only the end of the answer part when even that is too long)."""
  if count_tokens(response) <= max_tokens:
    return response
  tail = _final_part(response)
  room = max_tokens - count_tokens(ELISION) - count_tokens(tail)
  if room <= 0:
    return _fit(tail, max_tokens, count_tokens, from_end=True)
  head = response[:len(response) - len(tail)]
  return _fit(head, room, count_tokens) + ELISION + tail


def _render(question, instruction, responses, template, candidate):
  blocks = [candidate.format(label=chr(ord("A") + i), response=r) for i, r in enumerate(responses)]
  return template.format(question=question.strip(), instruction=instruction,
                         candidates="\n\n".join(blocks))


def _fitted(question, instruction, responses, each, budget, template, candidate, count_tokens,
            what):
  """The prompt with every response cut to `each` tokens, shrinking `each` until the whole
  prompt is within budget (token counts of joined texts are not exactly additive)."""
  while each > 0:
    prompt = _render(question, instruction, [truncate(r, each, count_tokens) for r in responses],
                     template, candidate)
    over = count_tokens(prompt) - budget.max_prompt_tokens
    if over <= 0:
      return prompt
    each -= max(1, -(-over // len(responses)))
  fixed = count_tokens(_render(question, instruction, [""] * len(responses), template, candidate))
  raise ValueError(f"{what}: question and instruction take {fixed} tokens, leaving no room for "
                   f"candidates in the prompt budget of {budget.max_prompt_tokens} tokens "
                   "(config field max_prompt_tokens)")


def bcq(question: str, correct_response: str, wrong_response: str, rng: np.random.Generator, *,
        budget: Budget = Budget(), instruction: str = BCQ_INSTRUCTION,
        template: str = TEMPLATE, candidate: str = CANDIDATE,
        count_tokens: Callable[[str], int] = approx_tokens) -> str:
  """The BCQ prompt: question, instruction, the two candidates in an order drawn from `rng`.

  Each candidate is cut to fit `budget` (its final answer kept); raises ValueError when the
  question and instruction alone leave no room for them.
  """
  pair = [_strip_think(correct_response), _strip_think(wrong_response)]
  if rng.random() < 0.5:
    pair.reverse()
  fixed = count_tokens(_render(question, instruction, ["", ""], template, candidate))
  each = min(budget.max_candidate_tokens, (budget.max_prompt_tokens - fixed) // 2)
  return _fitted(question, instruction, pair, each, budget, template, candidate, count_tokens,
                 "bcq")


def ncq(question: str, wrong_responses: Sequence[str], rng: np.random.Generator, *,
        budget: Budget = Budget(), instruction: str = NCQ_INSTRUCTION,
        template: str = TEMPLATE, candidate: str = CANDIDATE,
        count_tokens: Callable[[str], int] = approx_tokens) -> str:
  """The NCQ prompt: question, instruction, then up to `budget.max_responses` distinct wrong
  responses in an order drawn from `rng`, each cut to `max_candidate_tokens`, dropping those
  that would take the prompt past `max_prompt_tokens`.

  Duplicates (same text up to whitespace) are shown once. Raises ValueError when there is no
  response or not even one fits.
  """
  seen, distinct = set(), []
  for r in wrong_responses:
    text = _strip_think(r)
    key = " ".join(text.split())
    if key and key not in seen:
      seen.add(key)
      distinct.append(text)
  if not distinct:
    raise ValueError("ncq: no non-empty wrong responses given")
  order = rng.permutation(len(distinct))
  chosen = []
  for i in order[:budget.max_responses]:
    trial = chosen + [truncate(distinct[i], budget.max_candidate_tokens, count_tokens)]
    if count_tokens(_render(question, instruction, trial, template, candidate)) <= (
        budget.max_prompt_tokens):
      chosen = trial
  if chosen:
    return _render(question, instruction, chosen, template, candidate)
  # Not even one whole candidate fits: cut the first to what the question leaves.
  fixed = count_tokens(_render(question, instruction, [""], template, candidate))
  return _fitted(question, instruction, [distinct[order[0]]],
                 min(budget.max_candidate_tokens, budget.max_prompt_tokens - fixed), budget,
                 template, candidate, count_tokens, "ncq")
