"""`zppo_jax.hlo`: the bytes a compiled program's collectives move, every loop's trips
counted, from its optimized HLO text."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from zppo_jax import hlo


def test_a_compiled_scan_inside_a_data_dependent_loop():
  """A layer scan of 3 trips gathers a [16, 8] float32 weight each trip (512 bytes) inside a
  loop whose trips depend on the data: 1536 bytes a trip of the outer loop."""
  mesh = jax.make_mesh((4,), ("x",), axis_types=(AxisType.Auto,))
  w = jax.ShapeDtypeStruct((3, 16, 8), jnp.float32, sharding=NamedSharding(mesh, P(None, "x")))
  h = jax.ShapeDtypeStruct((4, 16), jnp.float32, sharding=NamedSharding(mesh, P()))

  def f(w, h, n):
    def layer(h, w):
      w = jax.lax.with_sharding_constraint(w, NamedSharding(mesh, P()))
      return jnp.tanh(h @ w @ w.T), None

    def body(c):
      return c[0] + 1, jax.lax.scan(layer, c[1], w)[0]
    return jax.lax.while_loop(lambda c: (c[0] < n) & (c[1].sum() < 1e9), body, (0, h))[1]

  out = hlo.collective_bytes(jax.jit(f).lower(w, h, 5).compile().as_text())
  assert out["per_trip"] == {"all-gather": 3 * 16 * 8 * 4, "total": 3 * 16 * 8 * 4}
  assert out["per_call"]["total"] == 3 * 16 * 8 * 4   # the outer loop's trips are unknown


HAND = """HloModule m

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%cond (p: (s32[], bf16[4,8])) -> pred[] {
  %p = (s32[], bf16[4,8]) parameter(0)
  %limit = s32[] constant(6)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%i, %limit), direction=LT
}

%body (q: (s32[], bf16[4,8])) -> (s32[], bf16[4,8]) {
  %q = (s32[], bf16[4,8]) parameter(0)
  %x = bf16[4,8]{1,0} get-tuple-element(%q), index=1
  %ag-start = (bf16[4,8], bf16[16,8]) all-gather-start(%x), dimensions={0}
  %ag = bf16[16,8]{1,0} all-gather-done(%ag-start), metadata={op_name="jit(f)/while/body/gather_w" stack_frame_id=3}
  %big = f32[64]{0} parameter(1)
  %rs = f32[16]{0} reduce-scatter(%big), dimensions={0}, to_apply=%add
  ROOT %t = (s32[], bf16[4,8]) tuple(%i, %x)
}

ENTRY %main (x: bf16[4,8]) -> bf16[4,8] {
  %x0 = bf16[4,8]{1,0} parameter(0)
  %ar = f32[10]{0} all-reduce(%x0), to_apply=%add, metadata={op_name="jit(f)/transpose(jvp(jit(_take)))/scatter-add"}
  %w = (s32[], bf16[4,8]) while(%init), condition=%cond, body=%body
  ROOT %out = bf16[4,8] get-tuple-element(%w), index=1
}
"""


def test_hand_counted_module():
  """`counter < 6` is 6 trips; an async all-gather counts once (its result, 256 bytes); a
  reduce-scatter counts its input (256 bytes, not its 64-byte result). The bytes are also
  credited to the JAX operation each came from (the program's name left off), largest
  first; a collective without metadata to ""."""
  out = hlo.collective_bytes(HAND)
  assert out["per_call"] == {"all-reduce": 40, "all-gather": 6 * 256, "reduce-scatter": 6 * 256,
                             "total": 40 + 12 * 256}
  assert list(out["per_call_sources"].items()) == [
      ("while/body/gather_w", 6 * 256), ("", 6 * 256),
      ("transpose(jvp(jit(_take)))/scatter-add", 40)]
  assert "per_trip" not in out   # every loop's trips are known


def test_text_that_is_not_a_module_is_refused():
  with pytest.raises(ValueError, match="no ENTRY computation"):
    hlo.collective_bytes("%x = f32[] constant(1)")
