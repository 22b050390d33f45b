"""Ahead-of-time compilation for a TPU slice on this CPU machine (`zppo_jax.aot`): the TPU
compiler (libtpu, in the test requirements) compiles the tiny run's programs for a v5e 2x2
slice over the run's own mesh, and XLA's figures say what the run relies on."""

import math

import jax
import jax.numpy as jnp
import pytest

from zppo_jax import aot, models, run_config

TOPOLOGY = "v5e:2x2"


@pytest.fixture(scope="module")
def report():
  try:
    aot.topology(TOPOLOGY)
  except RuntimeError as e:  # the runtime cannot start on this machine
    pytest.skip(f"the TPU compiler cannot describe {TOPOLOGY} here: {e}")
  c = run_config.config_module("tiny.py").get_config()
  c.rollout.max_new_tokens = c.teacher.max_new_tokens = 32
  return c, aot.run(c, TOPOLOGY, only=("train_step", "optimizer_update", "student_decode"),
                    log=lambda _: None)


def test_the_programs_compile_for_the_slice_on_the_runs_mesh(report):
  config, r = report
  assert r["devices"] == 4 and r["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert set(r["programs"]) == {"train_step", "optimizer_update", "student_decode"}
  whole = sum(math.prod(x.shape) * 4 for x in jax.tree.leaves(
      models.get("qwen3_5").param_shapes(aot.memory.model_config(
          "qwen3_5", config.student.path, None, "student"), jnp.float32)))
  # one device holds its quarter of the float32 params, not all of them
  assert whole / 4 <= r["residents"]["student params"] < whole / 2
  step = r["programs"]["train_step"]
  # the gradient program takes the params and the float32 gradient buffer, both sharded
  assert 2 * r["residents"]["student params"] <= step["argument_bytes"] < 2 * whole
  assert step["alias_bytes"] >= r["residents"]["student params"]   # the buffer is donated
  # XLA counts the model's 6·N·T and attention (the tiny scan is unrolled: every layer is
  # counted), not a replicated copy of the work
  assert not step["loop_bodies_counted_once"]
  assert 1.0 <= step["xla_flops_over_model_flops"] < 4.0
  assert 0 < step["mfu_bound"] <= 1.0
  decode = r["programs"]["student_decode"]
  # the decode loop updates the donated cache in place: no second copy
  assert decode["alias_bytes"] > 0.9 * decode["output_bytes"]
  assert decode["tokens_per_second_bound"] > 0 and decode["bytes_accessed"] > 0
  assert decode["bound_by"] == "memory"     # a decode step reads all weights for few tokens
  # the collectives are read from the compiled programs: the train step gathers its
  # FSDP-split weights; a decode step exchanges the rows' activations (its weights stay)
  assert "all-gather" in step["collective_bytes_by_op"]
  assert step["collective_bytes"] >= 3 * r["residents"]["student params"]
  assert decode["collective_bytes"] > 0 and decode["interconnect_seconds"] > 0
  # ... credited to the JAX operations they came from: the FSDP gathers to the layer scan,
  # and none to the token lookup, which moves its output's rows (`Layout.embed`); left to
  # itself, XLA gathered the whole table for the lookup and its gradient
  sources = step["collective_bytes_by_source"]
  assert any("while/body" in s for s in sources), sources
  assert not [s for s in sources if "_take" in s], sources
  # memory.py's hand count of the step (the state and the activations, `activations.py`)
  # is near XLA's; RESULTS.md compares them at real scale for every size
  counted = aot.memory.during(aot.memory.estimate(config, 4), "update")
  assert 0.7 < step["bytes_per_device"] / counted < 1.3
  update = r["programs"]["optimizer_update"]
  assert update["resident_beside_bytes"] == sum(
      v for k, v in r["residents"].items() if k not in ("student params", "optimizer state"))
  # the update takes the whole sharded state: params, both Adam moments and the gradients
  state = r["residents"]["student params"] + r["residents"]["optimizer state"]
  assert state + r["residents"]["student params"] <= update["argument_bytes"] < 2 * state


def test_a_program_over_the_chips_memory_is_named_with_its_numbers(report):
  _, r = report
  assert aot.over_hbm(r) == []
  small = dict(r, hbm_bytes=r["programs"]["train_step"]["bytes_per_device"] - 1)
  failures = aot.over_hbm(small)
  assert any(f.startswith("train_step: ") and "GiB HBM" in f and "temporaries" in f
             for f in failures)
  assert "**over HBM**" in aot.table(small) and "| student_decode |" in aot.table(small)


def test_bad_topologies_and_programs_are_named():
  with pytest.raises(ValueError, match="--topology 'v9x:2x2'"):
    aot.topology("v9x:2x2")
  with pytest.raises((RuntimeError, ValueError), match="v5e:3x7"):
    aot.topology("v5e:3x7")
