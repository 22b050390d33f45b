"""The question pipeline: grain shards per host, shuffles per epoch, parses, batches.

The iterator's position is plain state (`iterator.get_state()` / `set_state()`, a small
dict that checkpoints with the run), so a restored run sees exactly the batches it would
have seen.
"""

from __future__ import annotations

import dataclasses

import grain
import jax

from zppo_jax.data.records import DataError, parse_row

ON_ERROR = ("raise", "skip")


@dataclasses.dataclass
class ErrorCounter:
  """Malformed rows skipped by this process (with `on_error="skip"`), and the last message."""
  skipped: int = 0
  last: str = ""

  def record(self, message: str):
    self.skipped += 1
    self.last = message


def make_dataset(source, *, batch_size: int, seed: int = 0, shuffle: bool = True,
                 num_epochs: int | None = None, on_error: str = "raise",
                 errors: ErrorCounter | None = None, shard_index: int | None = None,
                 shard_count: int | None = None, drop_remainder: bool = True):
  """A grain IterDataset of batches (lists) of `Question`s from a source of (row, where).

  Args:
    source: JsonlSource, ParquetSource, TfdsSource, ArithmeticSource, or any random-access
      sequence of (raw row, where) pairs; a source with a `parse(row, where)` method turns
      its own rows into `Question`s.
    batch_size: questions per batch on this host.
    seed: shuffle seed; each epoch is reshuffled from it.
    num_epochs: None repeats forever.
    on_error: "raise" stops at a malformed row with an error naming it; "skip" drops it and
      counts it in `errors`.
    shard_index, shard_count: this host's shard (default: jax.process_index() of
      jax.process_count()); rows i with i % count == index.
  """
  if on_error not in ON_ERROR:
    raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  shard_index = jax.process_index() if shard_index is None else shard_index
  shard_count = jax.process_count() if shard_count is None else shard_count
  errors = ErrorCounter() if errors is None else errors
  to_question = getattr(source, "parse", parse_row)  # sources with their own record format

  def parse(item):
    row, where = item
    try:
      return to_question(row, where)
    except DataError as e:
      if on_error == "raise":
        raise
      errors.record(str(e))
      return None

  ds = grain.MapDataset.source(source).slice(slice(shard_index, None, shard_count))
  if shuffle:
    ds = ds.seed(seed).shuffle()
  ds = ds.repeat(num_epochs).map(parse).filter(lambda q: q is not None)
  return ds.to_iter_dataset().batch(batch_size, drop_remainder=drop_remainder, batch_fn=list)
