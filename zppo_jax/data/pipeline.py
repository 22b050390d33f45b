"""The question pipeline: grain shuffles per epoch, parses, batches, shards per host.

A step's *global* batch is the same whatever the number of hosts: batch b holds rows
[b*B, (b+1)*B) of the shuffled order, and host p of P reads only its contiguous share
[b*B + p*B/P, b*B + (p+1)*B/P). Concatenated in process order, the hosts' batches are the
one-host batch, so a run on P hosts sees the questions of a run on one. The rows are the
source's usable ones, found by one scan when the dataset is made (each host scans the same
source, so all agree).

The iterator's position is plain state (`iterator.get_state()` / `set_state()`, a small
dict that checkpoints with the run), the same on every host (it counts global batches), so
a restored run sees exactly the batches it would have seen, on any number of hosts.
"""

from __future__ import annotations

import dataclasses
import logging

import grain
import jax
import numpy as np

from zppo_jax.data import benchmarks, sources, synthetic, visual
from zppo_jax.data.records import DataError, check_unique_ids, parse_row

ON_ERROR = ("raise", "skip")
LOGGED_ROWS = 10  # skipped rows logged one by one; the rest only in the summary


@dataclasses.dataclass
class ErrorCounter:
  """Malformed rows skipped with `on_error="skip"`, counted when the dataset is made (the
  same on every host, as each scans the same source), and the last one's message."""
  skipped: int = 0
  last: str = ""

  def record(self, message: str):
    self.skipped += 1
    self.last = message
    if self.skipped <= LOGGED_ROWS:
      logging.warning("skipped a malformed row (data.on_error='skip'): %s", message)


def usable_rows(source, *, on_error: str = "raise",
                errors: ErrorCounter | None = None) -> np.ndarray:
  """The indices of the rows of `source` that parse, in order, from one pass over it.

  A malformed row raises its DataError (on_error="raise") or is counted in `errors` and left
  out ("skip"). Either way it is an error, naming the source, if no row is left, and if two
  rows share an id (which of them was meant cannot be told, so skipping would guess).
  """
  origin = getattr(source, "origin", "the dataset")
  if not len(source):
    raise DataError(f"{origin} has no rows")
  errors = ErrorCounter() if errors is None else errors
  to_question = getattr(source, "parse", parse_row)
  good, ids, skipped, first = [], [], 0, ""
  for index in range(len(source)):
    try:
      ids.append(to_question(*source[index]).id)
      good.append(index)
    except DataError as e:
      if on_error == "raise":
        raise
      errors.record(str(e))
      skipped, first = skipped + 1, first or str(e)
  if not good:
    raise DataError(f"{origin}: no usable question: all {len(source)} rows are malformed "
                    f"(first: {first})")
  check_unique_ids(ids, lambda i: source[good[i]][1])
  if skipped:
    logging.warning("%s: skipped %d malformed row(s) of %d (data.on_error='skip')", origin,
                    skipped, len(source))
  return np.asarray(good, np.int64)


def make_dataset(source, *, batch_size: int, seed: int = 0, shuffle: bool = True,
                 num_epochs: int | None = None, on_error: str = "raise",
                 errors: ErrorCounter | None = None, shard_index: int | None = None,
                 shard_count: int | None = None, drop_remainder: bool = True):
  """A grain IterDataset of batches (lists) of `Question`s from a source of (row, where).

  The source is scanned once first (`usable_rows`; not the generated synthetic sources), so
  malformed rows, an empty source and colliding ids fail here, before any training, and
  batches are drawn from the usable rows only.

  Args:
    source: JsonlSource, ParquetSource, TfdsSource, ArithmeticSource, or any random-access
      sequence of (raw row, where) pairs; a source with a `parse(row, where)` method turns
      its own rows into `Question`s.
    batch_size: questions per global batch (all hosts together); a multiple of shard_count.
    seed: shuffle seed; each epoch is reshuffled from it.
    num_epochs: None repeats forever.
    on_error: "raise" stops at the first malformed row with an error naming it; "skip"
      leaves it out, logs it and counts it in `errors` (complete when this returns).
    errors: the counter of skipped rows to add to (for the trainer to report).
    shard_index, shard_count: this host's shard (default: jax.process_index() of
      jax.process_count()).
    drop_remainder: drop a last global batch shorter than batch_size (if kept, hosts past
      its end get no share of it).
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
  to_question = getattr(source, "parse", parse_row)  # sources with their own record format

  ds = (grain.MapDataset.range(len(source))
        if getattr(source, "valid_by_construction", False) else
        grain.MapDataset.source(usable_rows(source, on_error=on_error, errors=errors)))
  if shuffle:
    ds = ds.seed(seed).shuffle()
  per_host = batch_size // shard_count
  ds = ds.repeat(num_epochs)
  if drop_remainder and num_epochs is not None:  # whole global batches only
    ds = ds[:len(ds) // batch_size * batch_size]
  # (an endless dataset has no remainder, and its length must stay an index-sized int)
  ds = ds.map(lambda index: to_question(*source[int(index)]))
  ds = ds.batch(per_host, drop_remainder=num_epochs is None, batch_fn=list)
  return ds.slice(slice(shard_index, None, shard_count)).to_iter_dataset()


def training_source(data_cfg, seed: int):
  """The rows of `config.data`: its `source` spec (`sources.parse_spec`: synthetic, TFDS,
  a file) in its row `format` ("" = our own rows, or a TFDS preset's)."""
  spec = sources.parse_spec(data_cfg.source, "config.data.source")
  fmt = spec.format or data_cfg.format
  if spec.source == "synthetic":
    return synthetic.ArithmeticSource(data_cfg.synthetic_size, seed=seed,
                                      level_weights=tuple(data_cfg.level_weights),
                                      styles=tuple(data_cfg.styles),
                                      review_fraction=data_cfg.review_fraction)
  if spec.source == "synthetic:visual":
    return visual.VisualArithmeticSource(data_cfg.synthetic_size, seed=seed,
                                         level_weights=tuple(data_cfg.level_weights),
                                         styles=tuple(data_cfg.styles),
                                         read_fraction=data_cfg.read_fraction,
                                         review_fraction=data_cfg.review_fraction)
  source = sources.open_rows(spec, "train", data_cfg.tfds_data_dir, raw=bool(fmt))
  return benchmarks.FormattedSource(source, fmt) if fmt else source
