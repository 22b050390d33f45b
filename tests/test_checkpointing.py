"""Checkpoints: sharded state and host JSON round-trip; a damaged newest checkpoint falls
back to the previous one; keep-last-K."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from zppo_jax import checkpointing, sharding


def _state(mesh, value):
  spec = NamedSharding(mesh, PartitionSpec("fsdp"))
  return {"w": jax.device_put(jnp.full((8, 3), value, jnp.float32), spec),
          "step": jax.device_put(jnp.asarray(value, jnp.int32), NamedSharding(mesh, PartitionSpec()))}


def test_round_trip_fallback_and_keep(tmp_path, caplog):
  mesh = sharding.make_mesh((1, 4, 1), devices=jax.devices()[:4])
  ckpt = checkpointing.Checkpointer(str(tmp_path), every=1, keep=2, async_save=True)
  for step in (1, 2, 3):
    ckpt.save(step, _state(mesh, step), {"step": step, "buffer": {"entries": [step]}})
  ckpt.wait()
  assert sorted(ckpt.manager.all_steps()) == [2, 3]  # keep=2
  target = checkpointing.abstract(_state(mesh, 0), jax.tree.map(lambda x: x.sharding,
                                                                _state(mesh, 0)))
  step, state, host = ckpt.restore_latest(target)
  assert step == 3 and host == {"step": 3, "buffer": {"entries": [3]}}
  np.testing.assert_array_equal(state["w"], np.full((8, 3), 3.0))
  assert state["w"].sharding.spec == PartitionSpec("fsdp")

  # damage every array file of the newest checkpoint: restore falls back to step 2
  files = [f for f in glob.glob(os.path.join(str(tmp_path), "3", "state", "**", "*"),
                                recursive=True) if os.path.isfile(f) and "metadata" not in f]
  assert files
  for f in files:
    with open(f, "r+b") as h:
      h.truncate(max(0, os.path.getsize(f) // 3))
  with caplog.at_level("WARNING"):
    step, state, host = ckpt.restore_latest(target)
  assert step == 2 and host["step"] == 2
  np.testing.assert_array_equal(state["w"], np.full((8, 3), 2.0))
  assert any("checkpoint" in r.message and "unreadable" in r.message and "step 2" in r.message
             for r in caplog.records)
  ckpt.close()


def test_empty_directory_restores_nothing(tmp_path):
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  ckpt = checkpointing.Checkpointer(str(tmp_path / "none"), every=5, keep=1)
  target = checkpointing.abstract(_state(mesh, 0), jax.tree.map(lambda x: x.sharding,
                                                                _state(mesh, 0)))
  assert ckpt.restore_latest(target) is None
  ckpt.close()


def test_params_alone_are_restored_into_their_shardings(tmp_path):
  """What evaluation reads: the params of the newest checkpoint, placed as asked (here on a
  different layout than they were saved in), without the optimizer state."""
  mesh = sharding.make_mesh((1, 4, 1), devices=jax.devices()[:4])
  ckpt = checkpointing.Checkpointer(str(tmp_path), every=1, keep=2, async_save=False)
  for step in (1, 2):
    params = {"w": jnp.arange(24, dtype=jnp.float32).reshape(8, 3) * step}
    ckpt.save(step, {"params": params, "opt_state": {"mu": params["w"] + 100}, "step": step},
              {"step": step})
  along = NamedSharding(mesh, PartitionSpec(None, None))
  target = {"w": jax.ShapeDtypeStruct((8, 3), jnp.float32, sharding=along)}
  step, params = checkpointing.restore_latest_params(str(tmp_path), target)
  assert step == 2 and set(params) == {"w"}
  np.testing.assert_array_equal(params["w"], np.arange(24).reshape(8, 3) * 2.0)
  assert params["w"].sharding == along
  ckpt.close()
  assert checkpointing.restore_latest_params(str(tmp_path / "none"), target) is None
