"""A workdir holds one run: its config is recorded there, and a run with another config
refuses to start in it unless told what to do.

`claim(workdir, config, on_change)` at the start of every run:
  no recorded config  record this one (a new run, or a workdir from before this rule);
  same config         continue (fields in RESUMABLE may differ: total_steps, logging, ...);
  other config        "refuse" (default): an error naming every differing field;
                      "continue": go on with the new settings, the old config kept as
                      run_config.<n>.json;
                      "new_run": the old run's files are moved into previous_runs/<n>/
                      (renamed, never deleted), and this run starts from step 0.
"""

from __future__ import annotations

import json
import os

from absl import logging

RUN_CONFIG = "run_config.json"
ON_CHANGE = ("refuse", "continue", "new_run")
# Fields that may change between the attempts of one run: how long, how it is logged,
# evaluated, checkpointed and exported, and how grading is parallelised.
RESUMABLE = ("total_steps", "log.", "eval.", "export.", "checkpoint.every", "checkpoint.keep",
             "checkpoint.async_save", "reward.workers", "reward.timeout_s", "compile_cache",
             "precompile")
# What a run writes into its workdir (moved aside together by "new_run").
RUN_FILES = ("checkpoints", "metrics.jsonl", "samples.jsonl", "reformulations.jsonl",
             "tensorboard", "eval", "export", RUN_CONFIG)


def flatten(tree: dict, prefix: str = "") -> dict:
  """{"a.b": leaf} of a nested dict (a config's to_dict())."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def differences(old: dict, new: dict) -> list[str]:
  """"field: old -> new" for each flat field that differs and is not RESUMABLE."""
  a, b = flatten(old), flatten(new)
  return [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}"
          for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k) and not k.startswith(RESUMABLE)]


def _json_config(config) -> dict:
  """The config as JSON data (tuples become lists, as they read back)."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def _free_name(pattern: str) -> str:
  """The first of pattern.format(n=1), (n=2), ... that does not exist."""
  n = 1
  while os.path.exists(pattern.format(n=n)):
    n += 1
  return pattern.format(n=n)


def _write(path: str, data: dict):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def claim(workdir: str, config, on_change: str = "refuse", *, write: bool = True) -> None:
  """Checks `config` against the run recorded in `workdir` (see the module docstring);
  `write` is False on all processes but one of a multi-host run."""
  if on_change not in ON_CHANGE:
    raise ValueError(f"on_config_change must be one of {ON_CHANGE}, got {on_change!r}")
  path = os.path.join(workdir, RUN_CONFIG)
  new = _json_config(config)
  if os.path.exists(path):
    with open(path) as f:
      try:
        old = json.load(f)
      except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): the workdir's recorded run config is "
                         "damaged; repair it, or start elsewhere") from None
    changed = differences(old, new)
    if not changed:
      if write:
        _write(path, new)  # RESUMABLE fields take their new values
      return
    listing = "\n  ".join(changed[:40]) + ("\n  ..." if len(changed) > 40 else "")
    if on_change == "refuse":
      raise ValueError(
          f"workdir {workdir} holds a run with another config ({len(changed)} field(s) "
          f"differ):\n  {listing}\nUse another --workdir, or --on_config_change=continue to "
          "go on with these settings, or --on_config_change=new_run to move the old run aside "
          "and start afresh.")
    if on_change == "continue":
      logging.warning("continuing the run in %s with changed settings:\n  %s", workdir, listing)
      if write:
        os.replace(path, _free_name(os.path.join(workdir, "run_config.{n}.json")))
    else:
      if config.checkpoint.dir and os.path.abspath(config.checkpoint.dir) != os.path.join(
          os.path.abspath(workdir), "checkpoints"):
        raise ValueError(f"--on_config_change=new_run moves the workdir's files aside, but "
                         f"config.checkpoint.dir={config.checkpoint.dir!r} is elsewhere: move "
                         "or rename it yourself, or point it at a new location")
      if write:
        move_run_aside(workdir)
  if write:
    os.makedirs(workdir, exist_ok=True)
    _write(path, new)


def move_run_aside(workdir: str) -> str | None:
  """Renames the run's files (RUN_FILES) into previous_runs/<n>/; returns that folder."""
  present = [name for name in RUN_FILES if os.path.exists(os.path.join(workdir, name))]
  if not present:
    return None
  target = _free_name(os.path.join(workdir, "previous_runs", "{n}"))
  os.makedirs(target)
  for name in present:
    os.rename(os.path.join(workdir, name), os.path.join(target, name))
  logging.warning("moved the previous run's files %s from %s into %s", present, workdir, target)
  return target
