"""Random-access sources of raw rows, which grain shuffles, shards and batches.

Each returns `(row, where)` pairs: the raw row (a dict, or a JSON line) and its name for
error messages, so a bad row is reported as "file.jsonl line 17" wherever it is parsed.
"""

from __future__ import annotations

import os

import numpy as np

from zppo_jax.data.records import DataError


class JsonlSource:
  """One JSON object a line. Line offsets are indexed once; rows are read on demand."""

  def __init__(self, path: str):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"dataset file {path} does not exist")
    self.path = path
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
    self.path = path
    self._table = pq.read_table(path)

  def __len__(self):
    return self._table.num_rows

  def __getitem__(self, index):
    return self._table.slice(int(index), 1).to_pylist()[0], f"{self.path} row {int(index)}"


def open_source(path: str):
  """A source for a local file, by extension: .jsonl / .json (JSON lines) or .parquet."""
  if path.endswith((".jsonl", ".json")):
    return JsonlSource(path)
  if path.endswith(".parquet"):
    return ParquetSource(path)
  raise DataError(f"dataset file {path}: unknown format (expected .jsonl, .json or .parquet)")
