"""Random-access sources of raw rows, which grain shuffles, shards and batches.

Each returns `(row, where)` pairs: the raw row (a dict, or a JSON line) and its name for
error messages, so a bad row is reported as "file.jsonl line 17" wherever it is parsed.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from zppo_jax.data import image_fields
from zppo_jax.data.records import DataError, Question, decode, parse_row
from zppo_jax.data.boxed import extract_boxed


class JsonlSource:
  """One JSON object a line. Line offsets are indexed once; rows are read on demand."""

  def __init__(self, path: str):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"dataset file {path} does not exist")
    self.path, self.origin = path, f"dataset file {path}"  # origin: the source in errors
    offsets, lines, position = [], [], 0
    with open(path, "rb") as f:
      for number, line in enumerate(f, start=1):
        if line.strip():
          offsets.append(position)
          lines.append(number)
        position += len(line)
    self._offsets = np.asarray(offsets, np.int64)
    self._lines = np.asarray(lines, np.int64)  # 1-based line numbers, for messages

  def __len__(self):
    return len(self._offsets)

  def __getitem__(self, index):
    with open(self.path, "rb") as f:
      f.seek(int(self._offsets[index]))
      line = f.readline()
    return line, f"{self.path} line {int(self._lines[index])}"  # decoded by parse_row


class ParquetSource:
  """A Parquet file, read once into columns (question datasets are small next to a model)."""

  def __init__(self, path: str):
    import pyarrow.parquet as pq
    if not os.path.isfile(path):
      raise FileNotFoundError(f"dataset file {path} does not exist")
    self.path, self.origin = path, f"dataset file {path}"
    self._table = pq.read_table(path)

  def __len__(self):
    return self._table.num_rows

  def __getitem__(self, index):
    index, where = int(index), f"{self.path} row {int(index)}"
    row = self._table.slice(index, 1).to_pylist()[0]
    # images stored in the row (HF Image structs) become keys that read them back
    return image_fields.to_references(
        row, lambda field, k: image_fields.parquet_key(os.path.abspath(self.path), index, field, k),
        where), where


def _after_hashes(text: str) -> str:
  """GSM8K's gold: the text after the last `####` of its worked answer."""
  if "####" not in text:
    raise ValueError("no '####' before the final answer")
  return text.rsplit("####", 1)[1].strip()


def _last_boxed(text: str) -> str:
  """MATH's gold: the last `\\boxed{}` of its solution."""
  boxed = extract_boxed(text)
  if boxed is None:
    raise ValueError("no \\boxed{} answer")
  return boxed


ANSWER_FORMATS = {"plain": str.strip, "after_hashes": _after_hashes, "boxed": _last_boxed}
# Field names and answer format of the TFDS question datasets we know, by dataset family.
TFDS_PRESETS = {
    "gsm8k": dict(question_field="question", answer_field="answer",
                  answer_format="after_hashes"),
    "math_dataset": dict(question_field="question", answer_field="answer",
                         answer_format="plain"),
}


def _text(value, field: str, where: str) -> str:
  return decode(value, f"{where}: field {field!r}") if isinstance(value, bytes) else str(value)


class TfdsSource:
  """A TFDS dataset, random access through `tfds.data_source` (ArrayRecord files).

  Its records are mapped to question rows by field names and an answer format ("plain",
  "after_hashes" for GSM8K, "boxed" for MATH-style solutions); `gsm8k` and `math_dataset/*`
  have presets, other datasets (e.g. the `huggingface:` namespace) name their fields.
  With `raw=True` fields are not mapped here (a `benchmarks.FormattedSource` reads them).
  """

  def __init__(self, name: str, split: str = "train", data_dir: str | None = None, *,
               question_field: str | None = None, answer_field: str | None = None,
               answer_format: str | None = None, id_field: str | None = None,
               choices_field: str | None = None, download: bool = False, raw: bool = False):
    import tensorflow_datasets as tfds
    preset = TFDS_PRESETS.get(name.split("/")[0].split(":")[-1], {})
    self.question_field = question_field or preset.get("question_field", "question")
    self.answer_field = answer_field or preset.get("answer_field", "answer")
    answer_format = answer_format or preset.get("answer_format", "plain")
    if answer_format not in ANSWER_FORMATS:
      raise ValueError(f"TFDS {name}: answer_format must be one of {sorted(ANSWER_FORMATS)}, "
                       f"got {answer_format!r}")
    self.name, self.split, self.id_field, self.choices_field = name, split, id_field, choices_field
    self.data_dir, self.raw = data_dir, raw
    self.origin = f"TFDS dataset {name!r} split {split!r}"
    self._answer = ANSWER_FORMATS[answer_format]
    try:
      self._data = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    except Exception as e:  # tfds raises many kinds; the first line says which
      reason = str(e).splitlines()[0].rstrip(".") if str(e) else type(e).__name__
      raise FileNotFoundError(
          f"TFDS dataset {name!r} split {split!r} could not be opened from data_dir "
          f"{data_dir or '(default)'}: {reason}. Prepare it as ArrayRecord first: `tfds build "
          f"{name} --data_dir DIR --file_format=array_record`") from None
    fields = set(self._data.dataset_info.features.keys())
    wanted = [] if raw else [f for f in (self.question_field, self.answer_field, id_field,
                                         choices_field) if f]
    missing = [f for f in wanted if f not in fields]
    if missing:
      raise ValueError(f"TFDS dataset {name!r}: field(s) {missing} not among its features "
                       f"{sorted(fields)}; set question_field/answer_field/id_field")

  def __len__(self):
    return len(self._data)

  def __getitem__(self, index):
    index = int(index)
    where, record = f"TFDS {self.name}/{self.split} record {index}", self._data[index]
    if self.raw:  # image features become keys that read them back (`image_fields`)
      record = image_fields.to_references(record, lambda field, k: image_fields.tfds_key(
          self.name, self.split, self.data_dir, index, field, k), where)
    return (index, record), where

  def parse(self, item, where: str) -> Question:
    """A `Question` from a (index, record) pair; the pipeline calls this instead of
    `parse_row`, so a record without a usable answer is named or skipped like any bad row."""
    index, record = item
    text = {f: _text(record[f], f, where) for f in (self.question_field, self.answer_field,
                                                    self.id_field) if f}
    try:
      answer = self._answer(text[self.answer_field])
    except ValueError as e:
      raise DataError(f"{where}: field {self.answer_field!r}: {e}") from None
    row = {"id": text[self.id_field] if self.id_field else f"{self.name}/{self.split}/{index}",
           "question": text[self.question_field], "answer": answer}
    if self.choices_field:
      row["choices"] = [_text(c, self.choices_field, where) for c in record[self.choices_field]]
    return parse_row(row, where)


def open_source(path: str):
  """A source for a local file, by extension: .jsonl / .json (JSON lines) or .parquet."""
  if path.endswith((".jsonl", ".json")):
    return JsonlSource(path)
  if path.endswith(".parquet"):
    return ParquetSource(path)
  raise DataError(f"dataset file {path}: unknown format (expected .jsonl, .json or .parquet)")


# ------------------------------------------------------------------------------ source specs

SPEC_OPTIONS = ("format", "split", "limit", "data_dir", "seed")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """Where rows come from, one grammar for training (`data.source`) and evaluation sets
  (`eval.benchmarks`, after `name=`): `source[;key=value...]`.

  source: `synthetic` (the training arithmetic; `synthetic:heldout` / `synthetic:transfer`
  for evaluation), `synthetic:visual` (the same drawn into images, `data.visual`;
  `synthetic:visual_heldout`), `tfds:<name>` (the `huggingface:` namespace included), or a .jsonl /
  .json / .parquet path. Options: format (a row format of data.benchmarks), split (TFDS),
  limit (the first N rows), data_dir (TFDS), seed (synthetic sets)."""
  source: str
  format: str = ""
  split: str = ""
  limit: int = 0
  data_dir: str = ""
  seed: int = 0

  @property
  def tfds_name(self) -> str | None:
    return self.source[len("tfds:"):] if self.source.startswith("tfds:") else None


def parse_spec(text: str, what: str) -> SourceSpec:
  """`source;key=value;...` -> SourceSpec; `what` names the config field in errors."""
  source, *options = [part.strip() for part in text.split(";")]
  if not source:
    raise ValueError(f"{what} {text!r}: no source before the options")
  fields = {"source": source}
  for option in filter(None, options):
    key, eq, value = option.partition("=")
    key = key.strip()
    if not eq or key not in SPEC_OPTIONS:
      raise ValueError(f"{what} {text!r}: option {option!r} is not one of "
                       + ", ".join(f"{k}=" for k in SPEC_OPTIONS))
    try:
      fields[key] = int(value) if key in ("limit", "seed") else value.strip()
    except ValueError:
      raise ValueError(f"{what} {text!r}: {key} must be an integer, got {value!r}") from None
  spec = SourceSpec(**fields)
  name = spec.tfds_name
  if name is not None and ":" in name.removeprefix("huggingface:"):
    raise ValueError(f"{what} {text!r}: a TFDS split goes in the split= option "
                     f"(tfds:{name.rsplit(':', 1)[0]};split={name.rsplit(':', 1)[1]})")
  return spec


def open_rows(spec: SourceSpec, default_split: str, data_dir: str = "", raw: bool = False):
  """The source of a TFDS or file spec (synthetic sets are data.synthetic's); `raw` keeps a
  TFDS dataset's own fields for a row format to map."""
  name = spec.tfds_name
  if name is not None:
    return TfdsSource(name, spec.split or default_split, spec.data_dir or data_dir or None,
                      raw=raw)
  return open_source(spec.source)
