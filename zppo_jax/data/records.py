"""The one record every source yields: a question with a verifiable answer."""

from __future__ import annotations

import dataclasses
import json
from typing import Any


class DataError(ValueError):
  """A malformed row; the message names the source, the row and the field."""


@dataclasses.dataclass(frozen=True)
class Question:
  id: str
  question: str
  answer: str
  choices: tuple[str, ...] = ()              # multiple choice: the answer is a letter
  teacher_responses: tuple[str, ...] = ()    # precomputed teacher rollouts, if any


def _strings(value, field, where) -> tuple[str, ...]:
  if value is None:
    return ()
  if isinstance(value, str) or not all(isinstance(v, str) for v in value):
    raise DataError(f"{where}: field {field!r} must be a list of strings, got {value!r:.80}")
  return tuple(value)


def as_object(row: Any, where: str, expected: str = "an object") -> dict:
  """A row as a dict: a JSON line is decoded; anything but an object is a named error."""
  if isinstance(row, (bytes, str)):
    try:
      row = json.loads(row)
    except json.JSONDecodeError as e:
      raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
  if not isinstance(row, dict):
    raise DataError(f"{where}: expected {expected}, got {type(row).__name__}")
  return row


def parse_row(row: Any, where: str) -> Question:
  """A `Question` from a dict (or a JSON line of one) with `id`, `question`, `answer` and
  optional `choices` and `teacher_responses`; `where` (e.g. "data.jsonl line 17") names the
  row in errors."""
  row = as_object(row, where, "an object with fields id, question, answer")
  missing = [k for k in ("id", "question", "answer") if row.get(k) in (None, "")]
  if missing:
    raise DataError(f"{where}: missing field(s) {missing}")
  if not isinstance(row["question"], str):
    raise DataError(f"{where}: field 'question' must be a string")
  answer = row["answer"]
  if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
    raise DataError(f"{where}: field 'answer' must be a string or a number, got {answer!r:.80}")
  return Question(id=str(row["id"]), question=row["question"], answer=str(answer),
                  choices=_strings(row.get("choices"), "choices", where),
                  teacher_responses=_strings(row.get("teacher_responses"), "teacher_responses",
                                             where))
