"""A step's train rows as chunks of fixed shapes: few programs to compile, little padding.

Rows are sorted by length and cut into chunks of `chunk_rows` rows; a chunk is padded to the
smallest length bucket that holds its longest row. Short rows (a question and its answer)
therefore stop paying for the longest row of the step (a BCQ/NCQ prompt with two candidate
solutions), and the number of rows never changes a shape: a step is more chunks, not a
bigger program. The lengths are `length_buckets(...)`, fixed by the config before the first
step, so every gradient program can be compiled up front (`TrainStep.precompile`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Row:
  """One train sequence: a prompt and a completion that carries the loss."""
  prompt: Sequence[int]
  completion: Sequence[int]
  logprobs: Sequence[float]   # the sampler's, one per completion token
  advantage: float
  truncated: bool = False
  off_policy: bool = False
  vision: tuple | None = None   # the prompt's images: (pixel_values, grids), or None

  def __len__(self) -> int:
    return len(self.prompt) + len(self.completion)

  def loss_tokens(self, mask_truncated: bool) -> int:
    """The tokens that carry loss: the completion's (none of a truncated one when the loss
    masks truncated completions), as `make_chunks`' loss_mask and `effective_mask` say."""
    return 0 if mask_truncated and self.truncated else len(self.completion)


def length_buckets(longest: int, step: int) -> tuple[int, ...]:
  """Chunk lengths up to one that holds `longest`: multiples of `step` up to 8 steps, then
  the increment doubles every 4 buckets (8k tokens in steps of 128: 22 buckets, each at most
  1/8 longer than the one below)."""
  if step < 1 or longest < 1:
    raise ValueError(f"length buckets need step >= 1 and a longest row >= 1, got step={step}, "
                     f"longest={longest}")
  out, size, inc = [], step, step
  while size < longest:
    out.append(size)
    size += inc
    if size >= 8 * inc:
      inc *= 2
  return tuple(out) + (size,)


def bucket_of(length: int, buckets: Sequence[int]) -> int:
  for b in buckets:
    if b >= length:
      return b
  raise ValueError(f"a train row of {length} tokens is longer than the largest length bucket "
                   f"{buckets[-1]}: raise the length limits it was built under")


def plan(lengths: Sequence[int], chunk_rows: int,
         buckets: Sequence[int]) -> list[tuple[list[int], int]]:
  """(row indices, chunk length) of each chunk: rows longest first, `chunk_rows` at a time
  (the last chunk may hold fewer and is padded with empty rows)."""
  order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
  return [(order[i:i + chunk_rows], bucket_of(lengths[order[i]], buckets))
          for i in range(0, len(order), chunk_rows)]


def make_chunks(rows: Sequence[Row], *, chunk_rows: int, buckets: Sequence[int],
                pad_id: int, vision_fields=None) -> list[dict[str, np.ndarray]]:
  """Host arrays of each chunk (`train_step` lists the fields), prompt then completion,
  right padding; only completion tokens carry loss. `real` [R] marks the rows that are not
  padding, for `train_step.weigh_rows`. `vision_fields(tokens, attention_mask,
  prompt_lengths, visions)`, given the chunk's rows' `vision` (None for padding rows), adds
  the fields of rows after image prompts (a vision-language run gives every chunk them: one
  program per length)."""
  chunks = []
  for members, length in plan([len(r) for r in rows], chunk_rows, buckets):
    c = dict(tokens=np.full((chunk_rows, length), pad_id, np.int32),
             attention_mask=np.zeros((chunk_rows, length), np.int32),
             loss_mask=np.zeros((chunk_rows, length), np.float32),
             sampler_logprobs=np.zeros((chunk_rows, length), np.float32),
             advantages=np.zeros(chunk_rows, np.float32), truncated=np.zeros(chunk_rows, bool),
             off_policy=np.zeros(chunk_rows, bool), real=np.zeros(chunk_rows, bool))
    for r, i in enumerate(members):
      row = rows[i]
      n, m = len(row.prompt), len(row.completion)
      c["tokens"][r, :n + m] = list(row.prompt) + list(row.completion)
      c["attention_mask"][r, :n + m] = 1
      c["loss_mask"][r, n:n + m] = 1
      c["sampler_logprobs"][r, n:n + m] = row.logprobs
      c["advantages"][r], c["truncated"][r] = row.advantage, row.truncated
      c["off_policy"][r], c["real"][r] = row.off_policy, True
    if vision_fields is not None:
      pad = [None] * (chunk_rows - len(members))
      c.update(vision_fields(c["tokens"], c["attention_mask"],
                             [len(rows[i].prompt) for i in members] + [0] * len(pad),
                             [rows[i].vision for i in members] + pad))
    chunks.append(c)
  return chunks
