r"""Evaluation sets: a one-line spec names a source and the row format it is in.

    "gsm8k=tfds:gsm8k;split=test;limit=500"
    "math500=/data/math500.jsonl;format=math500"
    "mmlu=tfds:huggingface:cais__mmlu/all;split=test;format=mmlu"
    "heldout=synthetic:heldout;limit=64"

A spec is `name=source` then `;key=value` options: `format` (a key of `FORMATS`), `split`
(TFDS, default "test"), `limit` (the first N questions), `data_dir` (TFDS), `seed`
(synthetic sets). Sources: `synthetic:heldout` (unseen questions of the trained arithmetic
families), `synthetic:transfer` (families never trained on), `tfds:<name>` (including the
`huggingface:` namespace) and `.jsonl` / `.json` / `.parquet` files.

Each format maps a row to a `Question` (the field mapping is in each function's docstring
and in the README). Math formats add Qwen's instruction to reason step by step and box the
answer; multiple-choice formats list the options as letters and ask for the letter boxed,
and their gold answer is that letter.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from zppo_jax.data import sources, synthetic, visual
from zppo_jax.data.records import (DataError, Question, as_object, check_unique_ids, decode,
                                   parse_row)

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CHOICE_INSTRUCTION = ("Answer with the letter of the correct option, and put the letter "
                      "within \\boxed{}.")
LETTERS = "ABCDEFGHIJKLMNOP"
DEFAULT_LIMIT = 64  # synthetic sets only; file and TFDS sets are read whole unless limited


def _plain(value, where: str, field: str = ""):
  """A TFDS record (bytes, numpy arrays, nested dicts) as JSON-like Python values; `field`
  (e.g. "choices.text") names bytes that are not UTF-8."""
  if isinstance(value, bytes):
    return decode(value, f"{where}: field {field!r}")
  if isinstance(value, np.ndarray):
    return ([_plain(v, where, field) for v in value.tolist()] if value.ndim else
            _plain(value.item(), where, field))
  if isinstance(value, (list, tuple)):
    return [_plain(v, where, field) for v in value]
  if isinstance(value, dict):
    return {k: _plain(v, where, f"{field}.{k}" if field else k) for k, v in value.items()}
  if isinstance(value, np.generic):
    return value.item()
  return value


def _field(row: dict, names: tuple[str, ...], where: str, *, required: bool = True):
  for name in names:
    if row.get(name) not in (None, ""):
      return row[name]
  if required:
    raise DataError(f"{where}: missing field {' / '.join(map(repr, names))} (fields present: "
                    f"{sorted(row)})")
  return None


def _options(value, field: str, where: str) -> list[str]:
  """Option texts from a list; anything else is a named DataError (not a TypeError later)."""
  if not isinstance(value, list):
    raise DataError(f"{where}: field {field!r} must be a list of options, got "
                    f"{type(value).__name__}")
  return [str(v) for v in value]


def _multiple_choice(question: str, options: list[str]) -> str:
  lines = [f"{LETTERS[i]}. {option}" for i, option in enumerate(options)]
  return f"{question}\n\n" + "\n".join(lines) + f"\n\n{CHOICE_INSTRUCTION}"


def _letter(answer, options: list, where: str, labels: list[str] | None = None) -> str:
  """The gold option as a letter, from an index (int), a letter, or one of `labels`."""
  if labels is not None and str(answer) in labels:
    index = labels.index(str(answer))
  elif isinstance(answer, int) or (isinstance(answer, str) and answer.isdigit()):
    index = int(answer)
  elif isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in LETTERS:
    index = LETTERS.index(answer.strip().upper())
  else:
    raise DataError(f"{where}: answer {answer!r} is neither an option index nor a letter")
  if not 0 <= index < len(options):
    raise DataError(f"{where}: answer {answer!r} is outside the {len(options)} options")
  return LETTERS[index]


def zppo(row, where, index):
  """Our own rows: `id`, `question`, `answer`, optional `choices`, `teacher_responses`."""
  del index
  return parse_row(row, where)


def gsm8k(row, where, index):
  """GSM8K: `question`; gold = the text after `####` in `answer`; id = row index."""
  try:
    answer = sources.ANSWER_FORMATS["after_hashes"](str(_field(row, ("answer",), where)))
  except ValueError as e:
    raise DataError(f"{where}: field 'answer': {e}") from None
  return Question(id=str(index), question=f"{_field(row, ('question',), where)}\n"
                  f"{MATH_INSTRUCTION}", answer=answer)


def math500(row, where, index):
  """MATH / MATH-500: `problem`; gold = `answer`, else the last \\boxed{} of `solution`;
  id = `unique_id`."""
  answer = _field(row, ("answer",), where, required=False)
  if answer is None:
    try:
      answer = sources.ANSWER_FORMATS["boxed"](str(_field(row, ("solution",), where)))
    except ValueError as e:
      raise DataError(f"{where}: field 'solution': {e}") from None
  return Question(id=str(row.get("unique_id", index)),
                  question=f"{_field(row, ('problem',), where)}\n{MATH_INSTRUCTION}",
                  answer=str(answer).strip())


def aime(row, where, index):
  """AIME (AI-MO and Maxwell-Jia layouts): `problem` / `Problem` / `question`; gold =
  `answer` / `Answer` (an integer 0-999); id = `id` / `ID`."""
  answer = str(_field(row, ("answer", "Answer"), where)).strip()
  question = _field(row, ("problem", "Problem", "question"), where)
  return Question(id=str(_field(row, ("id", "ID"), where, required=False) or index),
                  question=f"{question}\n{MATH_INSTRUCTION}", answer=answer)


def math_dataset(row, where, index):
  """DeepMind mathematics_dataset (TFDS `math_dataset/*`): `question`; gold = `answer`."""
  return Question(id=str(index), question=f"{_field(row, ('question',), where)}\n"
                  f"{MATH_INSTRUCTION}", answer=str(_field(row, ("answer",), where)).strip())


def mmlu(row, where, index):
  """MMLU (cais/mmlu): `question`, `choices` (list of 4); gold = `answer`, the index of the
  right choice (or its letter); id = `subject`/row index."""
  options = _options(_field(row, ("choices",), where), "choices", where)
  return Question(id=f"{row.get('subject', 'mmlu')}/{index}",
                  question=_multiple_choice(_field(row, ("question",), where), options),
                  answer=_letter(_field(row, ("answer",), where), options, where),
                  choices=tuple(options))


def mmlu_pro(row, where, index):
  """MMLU-Pro (TIGER-Lab/MMLU-Pro): `question`, `options` (up to 10); gold = `answer` (a
  letter) or `answer_index`; id = `question_id`."""
  options = _options(_field(row, ("options",), where), "options", where)
  answer = _field(row, ("answer", "answer_index"), where)
  return Question(id=str(row.get("question_id", index)),
                  question=_multiple_choice(_field(row, ("question",), where), options),
                  answer=_letter(answer, options, where), choices=tuple(options))


def arc(row, where, index):
  """AI2 ARC (TFDS `ai2_arc`): `question`, `choices` = {`text`: [...], `label`: [...]}; gold =
  `answerKey` (one of the labels, letters or digits); id = `id`."""
  choices = _field(row, ("choices",), where)
  if not isinstance(choices, dict) or "text" not in choices or "label" not in choices:
    raise DataError(f"{where}: field 'choices' must hold 'text' and 'label' lists")
  options = _options(choices["text"], "choices.text", where)
  labels = _options(choices["label"], "choices.label", where)
  return Question(id=str(row.get("id", index)),
                  question=_multiple_choice(_field(row, ("question",), where), options),
                  answer=_letter(_field(row, ("answerKey",), where), options, where, labels),
                  choices=tuple(options))


# -- vision-language sets: images arrive as references (`image_fields`: keys into the row's
# Parquet file or TFDS record, or paths), never pixels.

SHORT_INSTRUCTION = "Answer with a single word or number, and put it within \\boxed{}."


def _image_refs(row: dict, fields: tuple[str, ...], where: str) -> tuple[str, ...]:
  refs = []
  for field in fields:
    value = row.get(field)
    if value in (None, ""):
      continue
    if not isinstance(value, str):
      raise DataError(f"{where}: image field {field!r} is neither an image nor a path")
    refs.append(value)
  return tuple(refs)


def _free_or_choice(question: str, options, answer, where: str, free_instruction: str):
  """(question text, gold, choices) of a row that is multiple choice when it has options."""
  if options:
    return _multiple_choice(question, options), _letter(answer, options, where, options), \
        tuple(options)
  return f"{question}\n{free_instruction}", str(answer).strip(), ()


def mathvista(row, where, index):
  """MathVista (AI4Math/MathVista): `question`, `choices` (multi_choice rows), gold =
  `answer` (for multiple choice, the letter of that option); image = `decoded_image`, else the
  `image` path; id = `pid`."""
  options = row.get("choices") or []
  options = _options(options, "choices", where) if options else []
  question, answer, choices = _free_or_choice(
      _field(row, ("question",), where), options, _field(row, ("answer",), where), where,
      MATH_INSTRUCTION)
  images = _image_refs(row, ("decoded_image",), where) or _image_refs(row, ("image",), where)
  if not images:
    raise DataError(f"{where}: no image (fields 'decoded_image' / 'image')")
  return Question(id=str(row.get("pid", index)), question=question, answer=answer,
                  choices=choices, images=images)


def chartqa(row, where, index):
  """ChartQA (HuggingFaceM4/ChartQA): `query`; gold = `label` (its first entry when a list);
  image = `image`; id = row index."""
  label = _field(row, ("label", "answer"), where)
  label = label[0] if isinstance(label, list) and label else label
  images = _image_refs(row, ("image",), where)
  if not images:
    raise DataError(f"{where}: no image (field 'image')")
  return Question(id=str(index), question=f"{_field(row, ('query', 'question'), where)}\n"
                  f"{SHORT_INSTRUCTION}", answer=str(label).strip(), images=images)


def mmmu(row, where, index):
  """MMMU (MMMU/MMMU): `question` (its `<image k>` tags kept as text), `options` (a list, or
  its Python repr), gold = `answer` (a letter for multiple choice); images = `image_1` ...
  `image_7` in order; id = `id`."""
  import ast
  options = row.get("options") or []
  if isinstance(options, str):
    try:
      options = ast.literal_eval(options)
    except (ValueError, SyntaxError):
      raise DataError(f"{where}: field 'options' is not a list: {options[:60]!r}") from None
  options = _options(options, "options", where) if options else []
  if row.get("question_type") == "open":
    options = []
  question, answer, choices = _free_or_choice(
      _field(row, ("question",), where), options, _field(row, ("answer",), where), where,
      MATH_INSTRUCTION)
  return Question(id=str(row.get("id", index)), question=question, answer=answer,
                  choices=choices,
                  images=_image_refs(row, tuple(f"image_{k}" for k in range(1, 8)), where))


FORMATS: dict[str, Callable[[dict, str, int], Question]] = {
    "zppo": zppo, "gsm8k": gsm8k, "math500": math500, "aime": aime,
    "math_dataset": math_dataset, "mmlu": mmlu, "mmlu_pro": mmlu_pro, "arc": arc,
    "mathvista": mathvista, "chartqa": chartqa, "mmmu": mmmu}
# The format of TFDS datasets we know by name (others, e.g. huggingface:*, say `format=`).
TFDS_FORMATS = {"gsm8k": "gsm8k", "math_dataset": "math_dataset", "ai2_arc": "arc"}


class FormattedSource:
  """A source of raw rows (JSONL, Parquet, TFDS) read in a benchmark format: usable by
  `make_dataset` too, so training can read these formats (`data.format`)."""

  def __init__(self, source, fmt: str):
    if fmt not in FORMATS:
      raise ValueError(f"unknown benchmark format {fmt!r}; formats: {sorted(FORMATS)}")
    self.source, self.format = source, FORMATS[fmt]
    self.origin = f"{getattr(source, 'origin', 'a source')} read as {fmt}"

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    raw, where = self.source[int(index)]
    if isinstance(raw, tuple):  # TfdsSource rows are (index, record)
      raw = raw[1]
    return (int(index), raw), where

  def parse(self, item, where: str) -> Question:
    index, raw = item
    return self.format(_plain(as_object(raw, where), where), where, index)


@dataclasses.dataclass(frozen=True)
class Benchmark:
  name: str
  spec: sources.SourceSpec   # split: TFDS, default "test"; limit 0: all rows (synthetic
                             # sets: DEFAULT_LIMIT)

  @property
  def source(self) -> str:
    return self.spec.source


def parse_spec(spec: str) -> Benchmark:
  """`name=source;key=value;...` (see the module docstring; the source part is
  `sources.parse_spec`'s, the grammar of `data.source` too)."""
  name, eq, rest = spec.partition("=")
  if not eq or not name.strip() or not rest.split(";")[0].strip():
    raise ValueError(f"benchmark spec {spec!r} must start with name=source")
  source = sources.parse_spec(rest, "benchmark spec")
  if source.format and source.format not in FORMATS:
    raise ValueError(f"benchmark spec {spec!r}: unknown format {source.format!r}; formats: "
                     f"{sorted(FORMATS)}")
  return Benchmark(name.strip(), source)


def _unique(rows, limit: int) -> list[Question]:
  """The first `limit` rows with distinct questions (text, images and videos)."""
  out, seen = [], set()
  for row in rows:
    key = (row["question"], tuple(row.get("images", ())), tuple(row.get("videos", ())))
    if key not in seen:
      seen.add(key)
      out.append(parse_row(row, row["id"]))
      if len(out) == limit:
        break
  return out


def load(bench: Benchmark, *, level_weights=(0.3, 0.3, 0.25, 0.15), tfds_data_dir: str = ""
         ) -> list[Question]:
  """The questions of a benchmark, in file order (first `limit`)."""
  spec = bench.spec
  limit = spec.limit
  if spec.source.startswith("synthetic:"):
    kind = spec.source[len("synthetic:"):]
    limit = limit or DEFAULT_LIMIT
    if kind == "heldout":
      rows = synthetic.ArithmeticSource(100 * limit, seed=spec.seed, split="heldout",
                                        level_weights=tuple(level_weights))
    elif kind == "transfer":
      rows = synthetic.TransferSource(100 * limit, seed=spec.seed)
    elif kind == "visual_heldout":
      rows = visual.VisualArithmeticSource(100 * limit, seed=spec.seed, split="heldout",
                                           level_weights=tuple(level_weights))
    else:
      raise ValueError(f"benchmark {bench.name}: unknown synthetic set {kind!r} (heldout, "
                       "transfer, visual_heldout)")
    return _unique((rows.row(i) for i in range(len(rows))), limit)
  if spec.tfds_name is not None:
    fmt = spec.format or TFDS_FORMATS.get(spec.tfds_name.split("/")[0])
    if not fmt:
      raise ValueError(f"benchmark {bench.name}: say which row format TFDS {spec.tfds_name!r} "
                       f"is in (;format=, one of {sorted(FORMATS)})")
  else:
    fmt = spec.format or "zppo"
  source = sources.open_rows(spec, "test", tfds_data_dir, raw=True)
  formatted = FormattedSource(source, fmt)
  count = min(limit, len(formatted)) if limit else len(formatted)
  questions = [formatted.parse(*formatted[i]) for i in range(count)]
  check_unique_ids((q.id for q in questions), lambda i: formatted[i][1])  # results are by id
  return questions

