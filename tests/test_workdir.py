"""A workdir holds one run; metrics are appended, never truncated; unreadable checkpoints
are moved aside; bad settings are named before anything expensive."""

import json
import os
import re
import subprocess
import sys
import time

import jax.numpy as jnp
import pytest

from zppo_jax import checkpointing, metric_writer, run_config

from zppo_jax.rl import prompts, rewards, rollouts, stages
from zppo_jax import workdir as run_dir
from zppo_jax.data.records import Question
from zppo_jax.data.tokenizer import Tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**changes):
  c = run_config.config_module("tiny.py").get_config()
  for key, value in changes.items():
    *path, leaf = key.split(".")
    node = c
    for part in path:
      node = node[part]
    node[leaf] = value
  return c


# ---------------------------------------------------------------------------- run identity

def test_a_workdir_refuses_another_config_naming_the_fields(tmp_path):
  run_dir.claim(str(tmp_path), _config())
  assert os.path.exists(tmp_path / run_dir.RUN_CONFIG)
  run_dir.claim(str(tmp_path), _config())                      # the same run: fine
  run_dir.claim(str(tmp_path), _config(total_steps=80))        # a longer run: fine
  with pytest.raises(ValueError, match=r"buffer.enabled: True -> False[\s\S]*zppo.bcq"):
    run_dir.claim(str(tmp_path), _config(**{"buffer.enabled": False, "zppo.bcq": False}))
  with pytest.raises(ValueError, match="student.path"):
    run_dir.claim(str(tmp_path), _config(**{"student.path": "/elsewhere/other_model"}))


def test_continue_keeps_the_old_config_and_new_run_moves_the_old_run_aside(tmp_path):
  workdir = str(tmp_path)
  run_dir.claim(workdir, _config())
  (tmp_path / "metrics.jsonl").write_text('{"step": 0, "x": 1}\n')
  (tmp_path / "checkpoints" / "3").mkdir(parents=True)
  other = _config(**{"buffer.capacity": 7})
  run_dir.claim(workdir, other, "continue")
  assert json.loads((tmp_path / "run_config.1.json").read_text())["buffer"]["capacity"] == 32
  assert json.loads((tmp_path / run_dir.RUN_CONFIG).read_text())["buffer"]["capacity"] == 7
  run_dir.claim(workdir, _config(), "new_run")
  moved = tmp_path / "previous_runs" / "1"
  assert sorted(os.listdir(moved)) == ["checkpoints", "metrics.jsonl", run_dir.RUN_CONFIG]
  assert (moved / "checkpoints" / "3").is_dir()  # renamed, never deleted
  assert not (tmp_path / "metrics.jsonl").exists()
  with pytest.raises(ValueError, match="on_config_change must be one of"):
    run_dir.claim(workdir, _config(), "overwrite")


def test_a_damaged_run_config_is_named(tmp_path):
  (tmp_path / run_dir.RUN_CONFIG).write_text("{not json")
  with pytest.raises(ValueError, match="run_config.json is not valid JSON"):
    run_dir.claim(str(tmp_path), _config())


# ------------------------------------------------------------------------------- metrics

def test_metrics_are_appended_never_truncated_and_torn_lines_are_skipped(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path), tensorboard=False, start_step=0)
  for step in range(4):
    writer.write(step, {"loss": float(step)})
  path = tmp_path / "metrics.jsonl"
  with open(path, "a") as f:
    f.write('{"step": 4, "loss": 4.')  # a crash mid-write
  size = path.stat().st_size
  # resumed from the checkpoint after 2 steps: steps 2.. are redone
  writer = metric_writer.MetricWriter(str(tmp_path), tensorboard=False, start_step=2)
  writer.write(2, {"loss": 20.0})
  assert path.stat().st_size > size  # nothing was cut from the file
  assert [(r["step"], r["loss"]) for r in metric_writer.read(str(path))] == [
      (0, 0.0), (1, 1.0), (2, 20.0)]
  # a fresh start (no checkpoint) in the same workdir supersedes, and erases nothing
  metric_writer.MetricWriter(str(tmp_path), tensorboard=False, start_step=0)
  assert metric_writer.read(str(path)) == []
  assert '"loss": 20.0' in path.read_text()


def test_tensorboard_tags_are_ones_tensorboard_accepts():
  assert metric_writer.tensorboard_tag("eval/heldout/avg@4") == "eval/heldout/avg_at_4"
  assert metric_writer.tensorboard_tag("buffer/admitted_total/0/8") == "buffer/admitted_total/0/8"
  assert metric_writer.tensorboard_tag("a b:c") == "a_b_c"


# --------------------------------------------------------------------------- checkpoints

def _state(value):
  return {"w": jnp.full((4,), value, jnp.float32)}


def _corrupt(directory, step):
  for root, _, files in os.walk(os.path.join(directory, str(step))):
    for name in files:
      if not name.startswith("_"):
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"garbage")


def test_unreadable_checkpoints_are_moved_aside_and_saving_goes_on(tmp_path):
  directory = str(tmp_path / "ckpt")
  ckpt = checkpointing.Checkpointer(directory, every=1, keep=5, async_save=False)
  for step in (1, 2, 3):
    ckpt.save(step, _state(step), {"step": step})
  ckpt.close()
  _corrupt(directory, 3)
  ckpt = checkpointing.Checkpointer(directory, every=1, keep=5, async_save=False)
  step, state, host = ckpt.restore_latest(_state(0))
  assert step == 2 and host == {"step": 2} and float(state["w"][0]) == 2
  assert "3.unreadable-1" in os.listdir(directory)          # renamed, not deleted
  assert ckpt.manager.latest_step() == 2                     # no longer taken for the newest
  assert ckpt.save(3, _state(33), {"step": 3})               # step 3 can be saved anew
  ckpt.close()
  _corrupt(directory, 1), _corrupt(directory, 2), _corrupt(directory, 3)
  ckpt = checkpointing.Checkpointer(directory, every=1, keep=5, async_save=False)
  assert ckpt.restore_latest(_state(0)) is None              # every one unreadable
  assert ckpt.save(1, _state(1), {"step": 1})                # and the new run still saves
  assert ckpt.restore_latest(_state(0))[0] == 1
  ckpt.close()
  assert sorted(n for n in os.listdir(directory) if "unreadable" in n) == [
      "1.unreadable-1", "2.unreadable-1", "3.unreadable-1", "3.unreadable-2"]


# ------------------------------------------------------------------------ long questions

@pytest.fixture(scope="module")
def tok():
  return Tokenizer.load(os.path.join(REPO, "zppo_jax", "assets", "tiny_student"))


@pytest.mark.parametrize("policy", ["skip", "cut"])
def test_over_long_questions_are_skipped_or_cut_and_counted(tok, policy):
  config = _config(**{"data.long_questions": policy})
  short = Question("a", "Compute 2 + 3.", "5")
  long = Question("b", "Compute 2 + 3. " + "Some more words to read. " * 200 + "What is it?",
                  "5")
  huge = Question("c", "x" * 10_000_000 + " Compute 1 + 1.", "2")
  start = time.perf_counter()
  out, too_long = stages.fit_questions(tok, config.rollout, config.data.long_questions,
                                       [(short, False), (long, False), (huge, True)], limit=200)
  assert time.perf_counter() - start < 30  # a 10 MB question is never tokenised whole
  assert too_long == 2
  if policy == "skip":
    assert out == [(short, False)]
    return
  assert [(q.id, replayed) for q, replayed in out] == [("a", False), ("b", False), ("c", True)]
  for q, _ in out[1:]:
    assert prompts.ELISION in q.question and q.answer in ("5", "2")
    assert len(rollouts.prompt_ids(tok, config.rollout, [q.question])[0]) <= 200
  assert out[1][1] is False and out[1][0].question.startswith("Compute 2 + 3.")
  assert out[1][0].question.endswith("What is it?")


def test_the_prompt_limit_must_fit_the_model():
  def prompt_limit(c, positions):
    return stages.prompt_limit(c.rollout, c.zppo, True, positions)
  c = _config(**{"rollout.max_prompt_tokens": 0})  # 0: what the model's context leaves
  assert prompt_limit(c, 2048) == 2048 - c.rollout.max_new_tokens
  assert prompt_limit(_config(**{"rollout.max_prompt_tokens": 500}), 2048) == 500
  limit = c.zppo.max_prompt_tokens + c.rollout.max_new_tokens
  prompt_limit(_config(**{"rollout.max_prompt_tokens": 100}), limit)
  with pytest.raises(ValueError, match=f"max_position_embeddings={limit - 1}"):
    prompt_limit(_config(**{"rollout.max_prompt_tokens": 100}), limit - 1)  # BCQ/NCQ


# ------------------------------------------------------------------------------ settings

@pytest.mark.parametrize("changes,field", [
    ({"buffer.threshold": 1.5}, "config.buffer.threshold"),
    ({"rollout.group_size": 1}, "config.rollout.group_size"),
    ({"train.optimizer.learning_rate": -1e-5}, "config.train.optimizer.learning_rate"),
    ({"buffer.capacity": 0}, "config.buffer.capacity"),
    ({"buffer.replay_per_step": -3}, "config.buffer.replay_per_step"),
    ({"method": "grpo"}, "config.zppo.bcq/ncq are on, but method 'grpo'"),
    ({"data.long_questions": "truncate"}, "config.data.long_questions"),
])
def test_settings_that_cannot_work_are_named_before_anything_is_loaded(changes, field):
  with pytest.raises(ValueError, match=field.replace(".", r"\.").replace("(", r"\(")):
    run_config.validate(_config(**changes))


def test_reward_settings_that_cannot_work_are_named():
  with pytest.raises(ValueError, match=r"config\.reward\.timeout_s"):
    rewards.Grader.from_config(_config(**{"reward.timeout_s": 0.0}).reward)


def test_every_run_of_the_comparison_validates():
  """Each run of `zppo_jax.compare` (the paper's methods and the ablations on the tiny
  setup) is a valid config whose label names its method."""
  from zppo_jax import compare
  for label, spec in compare.paper_runs():
    c = run_config.config_module("tiny.py").get_config(spec.partition(":")[2])
    run_config.validate(c)
    assert run_config.label(c).startswith(c.method)


def _train_cli(*args):
  return subprocess.run([sys.executable, "-m", "zppo_jax.train", "--config=configs/tiny.py",
                         *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_an_unknown_config_field_on_the_command_line_is_one_line(tmp_path):
  out = _train_cli(f"--workdir={tmp_path}", "--config.buffer.capcity=3")
  assert out.returncode != 0
  assert out.stderr.strip().splitlines()[-1] == (
      "error: --config.buffer.capcity: the config has no field 'capcity' "
      "(did you mean 'capacity'?)")
  assert "Traceback" not in out.stderr


def test_export_only_without_a_checkpoint_is_an_error(tmp_path):
  out = _train_cli(f"--workdir={tmp_path / 'run'}", "--export_only")
  assert not re.search(r"^I\d{4} ", out.stderr, re.M)  # no library INFO lines by default
  assert out.returncode != 0
  assert "--export_only: no readable checkpoint in" in out.stderr
  assert not (tmp_path / "run" / "export").exists()
