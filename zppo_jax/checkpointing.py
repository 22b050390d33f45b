"""Run checkpoints with orbax: the sharded train state plus a JSON of host-side state.

A checkpoint holds `state` (params, optimizer state, step, RNG: restored straight into
their shardings) and `host` (replay buffer, data-iterator position, anything else the loop
needs to continue exactly). Orbax writes each step into a temporary directory and renames
it when complete, so a crash mid-save never leaves a half checkpoint that looks whole. A
checkpoint that is nonetheless unreadable (a truncated file, a bad disk) is moved aside when
a run restores (renamed `<step>.unreadable-<n>`, never deleted, with a warning naming it and
the error), and the run falls back to the one before: the bad step can neither be taken for
the newest again nor block saving that step anew.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from absl import logging


class Checkpointer:
  """Saves every `every` steps (asynchronously if `async_save`), keeps the last `keep`."""

  def __init__(self, directory: str, *, every: int, keep: int, async_save: bool = True):
    if every < 1 or keep < 1:
      raise ValueError(f"checkpoint.every and checkpoint.keep must be >= 1, got {every}, {keep}")
    self.directory = _location(directory)
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=every,
            enable_async_checkpointing=async_save))

  def save(self, step: int, state, host: dict, *, force: bool = False) -> bool:
    """Starts saving (returns at once when async); False when `step` is not a save step."""
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host)), force=force)

  def restore_latest(self, abstract_state):
    """(step, state, host) of the newest readable checkpoint, or None when there is none.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct with shardings: arrays are read
    directly into them.
    """
    found = _newest(self.manager, lambda: ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), host=ocp.args.JsonRestore()),
                    move_aside=True)
    if found is None:
      return None
    step, restored = found
    return step, restored.state, restored.host

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def abstract(tree, shardings):
  """ShapeDtypeStructs of `tree` (arrays or shapes) placed by `shardings` (same structure)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def restore_latest_params(directory: str, abstract_params):
  """(step, params) of the newest readable checkpoint in `directory`, or None: only the
  params are read, not the optimizer state (two thirds of the train state's bytes with
  AdamW), so evaluating a run needs no more memory than its model."""
  item = {"params": abstract_params}
  manager = ocp.CheckpointManager(
      _location(directory), options=ocp.CheckpointManagerOptions(read_only=True, create=False,
                                                                 save_interval_steps=0))
  try:
    found = _newest(manager, lambda: ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, partial_restore=True,
        restore_args=ocp.checkpoint_utils.construct_restore_args(item))))
  finally:
    manager.close()
  if found is None:
    return None
  step, restored = found
  return step, restored.state["params"]


def _location(directory: str) -> str:
  """A local path made absolute, or a URL orbax writes to directly (gs://bucket/run: shared
  by all hosts)."""
  return directory if "://" in directory else os.path.abspath(directory)


def _newest(manager, args, move_aside: bool = False):
  """(step, restored) of the newest step that `args()` restores, skipping unreadable ones
  (and renaming them out of the way when `move_aside`)."""
  steps = sorted(manager.all_steps(), reverse=True)
  found, bad = None, []
  for i, step in enumerate(steps):
    try:
      found = step, manager.restore(step, args=args())
      break
    except Exception as e:  # orbax and tensorstore raise many kinds for damaged files
      bad.append(step)
      after = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else "none left"
      logging.warning("checkpoint %s/%d is unreadable: %s; %s", manager.directory, step,
                      _first_line(e), after)
  if move_aside and bad:
    if jax.process_index() == 0:
      for step in bad:
        source = epath.Path(manager.directory) / str(step)
        n = 1
        while (target := source.parent / f"{step}.unreadable-{n}").exists():
          n += 1
        source.rename(target)
        logging.warning("moved the unreadable checkpoint %s aside to %s (not deleted)", source,
                        target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("checkpointing: unreadable steps moved aside")
    manager.reload()
  return found


def _first_line(e: Exception) -> str:
  """An exception as one readable line: its type and the first line of its text, whole."""
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:1000]}" if text else type(e).__name__
