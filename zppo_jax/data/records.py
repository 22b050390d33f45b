"""The one record every source yields: a question with a verifiable answer."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Iterable


class DataError(ValueError):
  """A malformed row; the message names the source, the row and the field."""


@dataclasses.dataclass(frozen=True)
class Question:
  id: str
  question: str
  answer: str
  choices: tuple[str, ...] = ()              # multiple choice: the answer is a letter
  teacher_responses: tuple[str, ...] = ()    # precomputed teacher rollouts, if any
  images: tuple[str, ...] = ()               # image references (paths, `images.open_image`),
                                             # never pixels: the buffer and checkpoints hold
                                             # these strings
  videos: tuple[str, ...] = ()               # video references (`video.open_clip`): frame
                                             # directories or "|"-joined frame references


def _strings(value, field, where) -> tuple[str, ...]:
  if value is None:
    return ()
  if isinstance(value, str) or not all(isinstance(v, str) for v in value):
    raise DataError(f"{where}: field {field!r} must be a list of strings, got {value!r:.80}")
  return tuple(value)


def decode(value: bytes, what: str) -> str:
  """UTF-8 bytes as text (a byte-order mark, as some editors write, is dropped); other bytes
  are a DataError naming `what` (the row, and the field if any), so they can be skipped."""
  try:
    return value.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise DataError(f"{what}: not valid UTF-8 (byte {value[e.start]:#04x} at offset "
                    f"{e.start})") from None


def as_object(row: Any, where: str, expected: str = "an object") -> dict:
  """A row as a dict: a JSON line is decoded; anything but an object is a named error."""
  if isinstance(row, bytes):
    row = decode(row, where)
  if isinstance(row, str):
    try:
      row = json.loads(row)
    except json.JSONDecodeError as e:
      raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
      raise DataError(f"{where}: not valid JSON (nested too deeply)") from None
  if not isinstance(row, dict):
    raise DataError(f"{where}: expected {expected}, got {type(row).__name__}")
  return row


def parse_row(row: Any, where: str) -> Question:
  """A `Question` from a dict (or a JSON line of one) with `id`, `question`, `answer` and
  optional `choices`, `teacher_responses`, `images` and `videos` (references); `where` (e.g.
  "data.jsonl line 17") names the row in errors."""
  row = as_object(row, where, "an object with fields id, question, answer")
  missing = [k for k in ("id", "question", "answer") if row.get(k) in (None, "")]
  if missing:
    raise DataError(f"{where}: missing field(s) {missing} (fields present: {sorted(row)})")
  if not isinstance(row["question"], str):
    raise DataError(f"{where}: field 'question' must be a string")
  answer = row["answer"]
  if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
    raise DataError(f"{where}: field 'answer' must be a string or a number, got {answer!r:.80}")
  return Question(id=str(row["id"]), question=row["question"], answer=str(answer),
                  choices=_strings(row.get("choices"), "choices", where),
                  teacher_responses=_strings(row.get("teacher_responses"), "teacher_responses",
                                             where),
                  images=_strings(row.get("images"), "images", where),
                  videos=_strings(row.get("videos"), "videos", where))


def check_unique_ids(ids: Iterable[str], where: Callable[[int], str]):
  """Raises a DataError naming the first id that two rows share, and both rows (`where(i)`
  names the row of the i-th id): the replay buffer and evaluation results are keyed by id,
  so two questions under one id would be mixed up."""
  first: dict[str, int] = {}
  for i, qid in enumerate(ids):
    j = first.setdefault(qid, i)
    if j != i:
      raise DataError(f"{where(i)}: id {qid!r} is also the id of {where(j)}; question ids "
                      "must be unique")
