"""The prompt replay buffer of ZPPO: host-side state and pure transitions.

A question enters the buffer (`admit`) when its rollout accuracy is below the threshold,
leaves it (`graduate`) when a revisit of the *original* question reaches the threshold, and
the oldest entry is evicted (FIFO) when an admission finds the buffer full. Every function
here returns a new `BufferState`; given the same inputs (the globally gathered accuracies)
every host computes the same buffer, and replay draws come from an RNG seeded by
(seed, step), so a resumed run replays exactly what an uninterrupted one would have.

Each entry and each retired record carries what the paper's graduation figures need: the
accuracy at admission (its bucket), the admission step, the revisits and their accuracies,
and the step and way it left.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

GRADUATED, EVICTED = "graduated", "evicted"
REPLAY_ORDERS = ("uniform", "oldest")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One buffered (or retired) question."""
  id: str
  question: dict             # the `Question` record as a dict, to replay it verbatim
  bucket: float              # rollout accuracy when admitted
  admitted_step: int
  revisits: int = 0
  history: tuple[float, ...] = ()   # accuracy of each revisit
  ended_step: int | None = None     # set when the entry graduates or is evicted
  outcome: str | None = None        # GRADUATED | EVICTED


@dataclasses.dataclass(frozen=True)
class BufferState:
  entries: tuple[Entry, ...] = ()   # admission order, oldest first
  retired: tuple[Entry, ...] = ()   # graduated and evicted entries, in the order they left

  @property
  def ids(self) -> frozenset[str]:
    return frozenset(e.id for e in self.entries)

  def __len__(self):
    return len(self.entries)


@dataclasses.dataclass(frozen=True)
class Events:
  """What one `update` did: ids admitted, and the entries that graduated or were evicted."""
  admitted: tuple[str, ...] = ()
  graduated: tuple[Entry, ...] = ()
  evicted: tuple[Entry, ...] = ()


def _retire(entry: Entry, step: int, outcome: str) -> Entry:
  return dataclasses.replace(entry, ended_step=step, outcome=outcome)


def admit(state: BufferState, question: Mapping, accuracy: float, step: int,
          capacity: int) -> tuple[BufferState, tuple[Entry, ...]]:
  """Appends the question; evicts the oldest entries first if the buffer is full.
  Returns the new state and the evicted entries."""
  if capacity < 1:
    raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
  entries, evicted = list(state.entries), []
  while len(entries) >= capacity:
    evicted.append(_retire(entries.pop(0), step, EVICTED))
  entries.append(Entry(id=str(question["id"]), question=dict(question), bucket=float(accuracy),
                       admitted_step=step))
  return BufferState(tuple(entries), state.retired + tuple(evicted)), tuple(evicted)


def revisit(state: BufferState, question_id: str, accuracy: float, step: int,
            threshold: float) -> tuple[BufferState, Entry | None]:
  """Records a revisit of a buffered question; it graduates (leaves the buffer) when the
  accuracy reaches `threshold`. Returns the new state and the graduated entry, if any."""
  entries = list(state.entries)
  i = next(i for i, e in enumerate(entries) if e.id == question_id)
  entry = dataclasses.replace(entries[i], revisits=entries[i].revisits + 1,
                              history=entries[i].history + (float(accuracy),))
  if accuracy >= threshold:
    del entries[i]
    done = _retire(entry, step, GRADUATED)
    return BufferState(tuple(entries), state.retired + (done,)), done
  entries[i] = entry
  return BufferState(tuple(entries), state.retired), None


def update(state: BufferState, results: Sequence[tuple[Mapping, float]], step: int, *,
           threshold: float, capacity: int) -> tuple[BufferState, Events]:
  """Applies one step's rollout accuracies on original questions, in batch order: a
  buffered question is revisited (and may graduate); another is admitted when its accuracy
  is below `threshold`. `results` holds (question dict with an "id", accuracy) pairs."""
  admitted, graduated, evicted = [], [], []
  for question, accuracy in results:
    qid = str(question["id"])
    if qid in state.ids:
      state, done = revisit(state, qid, accuracy, step, threshold)
      graduated += [done] if done else []
    elif accuracy < threshold:
      state, gone = admit(state, question, accuracy, step, capacity)
      admitted.append(qid)
      evicted += gone
  return state, Events(tuple(admitted), tuple(graduated), tuple(evicted))


def sample(state: BufferState, num: int, rng: np.random.Generator, *,
           order: str = "uniform", exclude: frozenset[str] = frozenset()) -> tuple[Entry, ...]:
  """Up to `num` distinct buffered entries to replay this step, none of them in `exclude`
  (questions already in the batch): uniformly at random, or the oldest first."""
  if order not in REPLAY_ORDERS:
    raise ValueError(f"buffer.replay_order must be one of {REPLAY_ORDERS}, got {order!r}")
  pool = [e for e in state.entries if e.id not in exclude]
  num = min(num, len(pool))
  if order == "oldest":
    return tuple(pool[:num])
  return tuple(pool[i] for i in sorted(rng.choice(len(pool), size=num, replace=False)))


def admission_counts(entries: Sequence[Entry], group_size: int) -> dict[str, int]:
  """Entries per admission bucket, keyed by the bucket's number of correct rollouts out of
  `group_size` (the paper's 0, 1/8, 2/8, 3/8 buckets are keys "0/8" .. "3/8")."""
  counts: dict[str, int] = {}
  for e in entries:
    key = f"{round(e.bucket * group_size)}/{group_size}"
    counts[key] = counts.get(key, 0) + 1
  return dict(sorted(counts.items()))


# ------------------------------------------------------------------------ serialisation

def to_json(state: BufferState) -> dict:
  """A JSON-able dict of the whole state (for the checkpoint)."""
  return {"entries": [dataclasses.asdict(e) for e in state.entries],
          "retired": [dataclasses.asdict(e) for e in state.retired]}


def from_json(data: Mapping) -> BufferState:
  def entry(d):
    return Entry(**{**d, "history": tuple(d["history"])})
  return BufferState(tuple(map(entry, data["entries"])), tuple(map(entry, data["retired"])))
