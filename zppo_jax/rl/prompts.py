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

Candidates and questions are quoted so that they cannot pass for the prompt's structure: a
line of theirs that reads as a candidate header ("### Response B") gets Markdown's escape
("\### Response B"). Special-token strings in them are left to the tokenizer, which encodes
message text as plain text (`Tokenizer.encode_chat`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Callable, Sequence

import numpy as np

from zppo_jax.data.tokenizer import THINK_CLOSE

BCQ_INSTRUCTION = ("Here are two responses to the question above. One is correct and the "
                   "other is wrong. Use them as references to help you solve the problem.")
NCQ_INSTRUCTION = ("Below are incorrect reasoning processes for the question above. Find "
                   "where they go wrong, then solve the problem correctly.")
TEMPLATE = "{question}\n\n{instruction}\n\n{candidates}"
CANDIDATE = "### Response {label}\n{response}"
ELISION = "\n[...]\n"
# What str.splitlines() ends a line at, as a regex character class's contents.
LINE_BREAKS = r"\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029"


def approx_tokens(text: str) -> int:
  return len(text) // 4 + 1


class Unbuildable(ValueError):
  """A prompt that cannot be built from legal inputs (a question that leaves no room in the
  budget, no response with text): the trainer skips that reformulation and counts it, where
  a plain ValueError is a programmer's error."""


@dataclasses.dataclass(frozen=True)
class Budget:
  """Token limits of a reformulated prompt (config fields `zppo.max_prompt_tokens`,
  `zppo.max_candidate_tokens`, `zppo.max_ncq_responses`)."""
  max_prompt_tokens: int = 4096      # the whole prompt, question and instruction included
  max_candidate_tokens: int = 1536   # each candidate response
  max_responses: int = 4             # NCQ: wrong responses shown at most

  def __post_init__(self):
    """A limit that no prompt could meet is a configuration error, raised once, not an
    Unbuildable prompt on every step."""
    for name in ("max_prompt_tokens", "max_candidate_tokens", "max_responses"):
      if getattr(self, name) < 1:
        raise ValueError(f"Budget.{name} must be at least 1, got {getattr(self, name)}")
    if self.max_responses > 26:
      raise ValueError(f"Budget.max_responses must be at most 26 (candidates are labelled A to "
                       f"Z), got {self.max_responses}")


@functools.lru_cache(maxsize=None)
def _header(candidate: str) -> re.Pattern | None:
  """Matches the start of a line that would read as a header of the `candidate` format (its
  line with `{label}`, up to `{response}`) at any heading level, spacing, case and letter;
  None when the format labels nothing."""
  line = next((line for line in candidate.format(label="\0", response="\1").split("\n")
               if "\0" in line), "").split("\1")[0].rstrip()
  if "\0" not in line:
    return None
  space = rf"[^\S{LINE_BREAKS}]"
  header = "".join(r"[A-Z](?![A-Za-z0-9])" if part == "\0" else rf"#+{space}*" if part[0] == "#"
                   else rf"{space}+" if part.isspace() else re.escape(part)
                   for part in re.findall(r"\0|#+\s*|\s+|[^#\s\0]+", line))
  return re.compile(rf"(?:^|(?<=[{LINE_BREAKS}]))({space}*)(?={header})", re.IGNORECASE)


def _quote(text: str, candidate: str) -> str:
  """`text` with a backslash (Markdown's escape) before each line that would read as a
  candidate header, so that a response or question cannot fake the start of a candidate."""
  header = _header(candidate)
  return text if header is None else header.sub(r"\1\\", text)


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
  close = response.rfind(THINK_CLOSE)
  if close >= 0:
    return response[close + len(THINK_CLOSE):]
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
  blocks = [candidate.format(label=chr(ord("A") + i), response=_quote(r, candidate))
            for i, r in enumerate(responses)]
  return template.format(question=_quote(question.strip(), candidate), instruction=instruction,
                         candidates="\n\n".join(blocks))


def _check_question(question: str, what: str):
  """A blank question (a legal row of whitespace) leaves nothing to reformulate."""
  if not question.strip():
    raise Unbuildable(f"{what}: the question is empty")


def _fitted(question, instruction, responses, each, budget, template, candidate, count_tokens,
            what):
  """The prompt with every response cut to `each` tokens, shrinking `each` until the whole
  prompt is within budget (token counts of joined texts are not exactly additive). Raises
  Unbuildable when that cuts a response to nothing."""
  while each > 0:
    cut = [truncate(r, each, count_tokens) for r in responses]
    if not all(c.strip() for c in cut):
      break
    prompt = _render(question, instruction, cut, template, candidate)
    over = count_tokens(prompt) - budget.max_prompt_tokens
    if over <= 0:
      return prompt
    each -= max(1, -(-over // len(responses)))
  fixed = count_tokens(_render(question, instruction, [""] * len(responses), template, candidate))
  raise Unbuildable(f"{what}: question and instruction take {fixed} tokens, leaving no room for "
                    f"candidates in the prompt budget of {budget.max_prompt_tokens} tokens "
                    "(config field max_prompt_tokens)")


def bcq(question: str, correct_response: str, wrong_response: str, rng: np.random.Generator, *,
        budget: Budget = Budget(), instruction: str = BCQ_INSTRUCTION,
        template: str = TEMPLATE, candidate: str = CANDIDATE,
        count_tokens: Callable[[str], int] = approx_tokens) -> str:
  """The BCQ prompt: question, instruction, the two candidates in an order drawn from `rng`.

  Each candidate is cut to fit `budget` (its final answer kept). Raises Unbuildable when
  the question is empty, a response has no text once its think tags are removed, or the
  question and instruction leave no room for the candidates.
  """
  _check_question(question, "bcq")
  pair = [_strip_think(correct_response), _strip_think(wrong_response)]
  for text, which in zip(pair, ("correct", "wrong")):
    if not text:
      raise Unbuildable(f"bcq: the {which} response has no text once its think tags are removed")
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

  Duplicates (same text up to whitespace) are shown once. Raises Unbuildable when the
  question is empty, no response has text once its think tags are removed, or not even one
  fits.
  """
  _check_question(question, "ncq")
  seen, distinct = set(), []
  for r in wrong_responses:
    text = _strip_think(r)
    key = " ".join(text.split())
    if key and key not in seen:
      seen.add(key)
      distinct.append(text)
  if not distinct:
    raise Unbuildable(f"ncq: no non-empty wrong responses given (none of {len(wrong_responses)} "
                      "has text once its think tags are removed)")
  order = rng.permutation(len(distinct))
  chosen = []
  for i in order[:budget.max_responses]:
    cut = truncate(distinct[i], budget.max_candidate_tokens, count_tokens)
    trial = chosen + [cut]
    if cut.strip() and count_tokens(_render(question, instruction, trial, template, candidate)) <= (
        budget.max_prompt_tokens):
      chosen = trial
  if chosen:
    return _render(question, instruction, chosen, template, candidate)
  # Not even one whole candidate fits: cut the first to what the question leaves.
  fixed = count_tokens(_render(question, instruction, [""], template, candidate))
  return _fitted(question, instruction, [distinct[order[0]]],
                 min(budget.max_candidate_tokens, budget.max_prompt_tokens - fixed), budget,
                 template, candidate, count_tokens, "ncq")
