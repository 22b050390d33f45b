"""The replay buffer's rules (ZPPO.md step 4): admit below the threshold, graduate at it on the
original question, FIFO eviction at capacity; and their invariants over random histories."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zppo_jax.rl import replay_buffer as rb

THRESHOLD = 0.5


def _q(i):
  return {"id": f"q{i}", "question": f"question {i}", "answer": str(i)}


def _update(state, results, step, capacity=4):
  return rb.update(state, [(_q(i), acc) for i, acc in results], step, threshold=THRESHOLD,
                   capacity=capacity)


def test_admission_only_below_threshold():
  state, events = _update(rb.BufferState(), [(0, 0.0), (1, 0.375), (2, 0.5), (3, 1.0)], step=1)
  assert events.admitted == ("q0", "q1")
  assert [e.id for e in state.entries] == ["q0", "q1"]
  assert [(e.bucket, e.admitted_step, e.revisits) for e in state.entries] == [(0.0, 1, 0),
                                                                              (0.375, 1, 0)]


def test_graduation_at_threshold_on_revisit():
  state, _ = _update(rb.BufferState(), [(0, 0.125), (1, 0.25)], step=1)
  state, events = _update(state, [(0, 0.375), (1, 0.5)], step=2)
  assert [e.id for e in events.graduated] == ["q1"]
  grad = events.graduated[0]
  assert (grad.outcome, grad.ended_step, grad.revisits, grad.history) == ("graduated", 2, 1,
                                                                          (0.5,))
  assert [e.id for e in state.entries] == ["q0"]
  assert state.entries[0].history == (0.375,) and state.entries[0].revisits == 1
  assert state.retired == (grad,)


def test_fifo_eviction_order_and_capacity():
  state = rb.BufferState()
  state, _ = _update(state, [(0, 0.0), (1, 0.0), (2, 0.0)], step=1, capacity=3)
  # revisiting q0 does not refresh its place: eviction is by admission order
  state, _ = _update(state, [(0, 0.25)], step=2, capacity=3)
  state, events = _update(state, [(3, 0.0), (4, 0.1)], step=3, capacity=3)
  assert [e.id for e in events.evicted] == ["q0", "q1"]
  assert all(e.outcome == "evicted" and e.ended_step == 3 for e in events.evicted)
  assert [e.id for e in state.entries] == ["q2", "q3", "q4"]


def test_graduated_question_is_not_replayed_unless_readmitted():
  state, _ = _update(rb.BufferState(), [(0, 0.0), (1, 0.0)], step=1)
  state, _ = _update(state, [(0, 0.75)], step=2)
  rng = np.random.default_rng(0)
  for _ in range(20):
    assert [e.id for e in rb.sample(state, 5, rng)] == ["q1"]
  # a later failure on the original question admits it again, as a new entry
  state, events = _update(state, [(0, 0.25)], step=3)
  assert events.admitted == ("q0",)
  assert {e.id for e in rb.sample(state, 5, rng)} == {"q0", "q1"}
  assert state.entries[-1].admitted_step == 3 and state.entries[-1].bucket == 0.25


def test_sample_excludes_batch_and_orders():
  state, _ = _update(rb.BufferState(), [(i, 0.0) for i in range(4)], step=1)
  assert [e.id for e in rb.sample(state, 2, None, order="oldest")] == ["q0", "q1"]
  got = rb.sample(state, 10, np.random.default_rng(1), exclude=frozenset({"q2"}))
  assert sorted(e.id for e in got) == ["q0", "q1", "q3"]
  a = rb.sample(state, 2, np.random.default_rng(7))
  assert a == rb.sample(state, 2, np.random.default_rng(7))  # seeded: reproducible
  with pytest.raises(ValueError, match="buffer.replay_order"):
    rb.sample(state, 1, None, order="newest")


def test_bucket_counts():
  state, _ = _update(rb.BufferState(), [(0, 0.0), (1, 0.125), (2, 0.125), (3, 0.375)], step=1)
  assert rb.admission_counts(state.entries, 8) == {"0/8": 1, "1/8": 2, "3/8": 1}


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6),
       st.lists(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 8)), max_size=6),
                max_size=12))
def test_invariants_over_random_histories(capacity, steps):
  """Capacity is never exceeded; ids are unique; entries stay in admission order; everything
  admitted is either buffered or retired; a buffered question never reached the threshold;
  a graduate's last revisit did; the state survives a JSON round trip."""
  state, admitted = rb.BufferState(), 0
  for step, batch in enumerate(steps):
    seen, results = set(), []
    for i, correct in batch:
      if i not in seen:  # a batch holds each question once
        seen.add(i)
        results.append((i, correct / 8))
    before = state.ids
    state, events = _update(state, results, step, capacity=capacity)
    admitted += len(events.admitted)
    assert len(state) <= capacity
    assert len(state.ids) == len(state)
    assert [e.admitted_step for e in state.entries] == sorted(e.admitted_step
                                                             for e in state.entries)
    assert admitted == len(state.entries) + len(state.retired)
    for e in state.entries:
      assert e.bucket < THRESHOLD and all(h < THRESHOLD for h in e.history)
    for e in events.graduated:
      assert e.id in before and e.history[-1] >= THRESHOLD and e.id not in state.ids
    for i, acc in results:
      if f"q{i}" not in before and acc >= THRESHOLD:
        assert f"q{i}" not in state.ids
  assert rb.from_json(json.loads(json.dumps(rb.to_json(state)))) == state
