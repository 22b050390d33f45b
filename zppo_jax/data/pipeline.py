"""The question pipeline: grain shuffles per epoch, parses, batches, shards per host.

A step's *global* batch is the same whatever the number of hosts: batch b holds rows
[b*B, (b+1)*B) of the shuffled order, and host p of P reads only its contiguous share
[b*B + p*B/P, b*B + (p+1)*B/P). Concatenated in process order, the hosts' batches are the
one-host batch, so a run on P hosts sees the questions of a run on one.

The iterator's position is plain state (`iterator.get_state()` / `set_state()`, a small
dict that checkpoints with the run), the same on every host (it counts global batches), so
a restored run sees exactly the batches it would have seen, on any number of hosts.
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
    batch_size: questions per global batch (all hosts together); a multiple of shard_count.
    seed: shuffle seed; each epoch is reshuffled from it.
    num_epochs: None repeats forever.
    on_error: "raise" stops at a malformed row with an error naming it; "skip" drops it and
      counts it in `errors`.
    shard_index, shard_count: this host's shard (default: jax.process_index() of
      jax.process_count()).
    drop_remainder: drop a last global batch shorter than batch_size (if kept, hosts past
      its end get no share of it).
  Malformed rows skipped with on_error="skip" leave their batch one shorter (every host
  stays at the same global batch).
  """
  if on_error not in ON_ERROR:
    raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  shard_index = jax.process_index() if shard_index is None else shard_index
  shard_count = jax.process_count() if shard_count is None else shard_count
  if batch_size % shard_count:
    raise ValueError(f"a global batch of {batch_size} questions does not split over "
                     f"{shard_count} processes (questions_per_step must be a multiple)")
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

  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.seed(seed).shuffle()
  per_host = batch_size // shard_count
  ds = ds.repeat(num_epochs)
  if drop_remainder and num_epochs is not None:  # whole global batches only
    ds = ds[:len(ds) // batch_size * batch_size]
  # (an endless dataset has no remainder, and its length must stay an index-sized int)
  ds = ds.map(parse).batch(per_host, drop_remainder=num_epochs is None, batch_fn=list)
  ds = ds.slice(slice(shard_index, None, shard_count))
  return ds.map(lambda batch: [q for q in batch if q is not None]).to_iter_dataset()
