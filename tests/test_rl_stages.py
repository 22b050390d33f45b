"""The step's pure stages (batch assembly, reformulation, teacher in the group), the methods
table and the method configs."""

import dataclasses
import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from zppo_jax import run_config
from zppo_jax.data.records import Question
from zppo_jax.rl import losses, methods, rollouts, stages
from zppo_jax.rl.rollouts import BCQ, NCQ, ORIGINAL

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Q = Question(id="q1", question="Compute 2 + 3.", answer="5",
             teacher_responses=("<think>\n2 + 3 = 5\n</think>\nThe answer is $\\boxed{5}$.",))


def _group(rewards, kind=ORIGINAL, prompt=(1, 2, 3)):
  rewards = np.asarray(rewards, np.float32)
  texts = [f"<think>\nguess\n</think>\n\\boxed{{{5 if r else 7}}}" for r in rewards]
  comps = [[10 + i] * (2 + i) for i in range(len(rewards))]
  return rollouts.Group(kind, Q, list(prompt), comps, [[-1.0] * len(c) for c in comps],
                        [False] * len(rewards), texts, rewards, np.zeros(len(rewards), bool))


def test_train_rows_carry_completions_and_advantages():
  groups = [_group([1, 0, 0]), _group([0, 1, 1], kind=BCQ, prompt=(4, 5))]
  adv = [np.array([1.0, -0.5, -0.5]), np.array([-1.0, 0.5, 0.5])]
  rows = stages.train_rows(groups, adv)
  assert [r.advantage for r in rows] == [1, -0.5, -0.5, -1, 0.5, 0.5]
  assert list(rows[0].prompt) == [1, 2, 3] and list(rows[0].completion) == [10, 10]
  assert list(rows[3].prompt) == [4, 5] and list(rows[3].logprobs) == [-1, -1]
  assert not any(r.off_policy or r.truncated for r in rows)


def test_sample_shapes_are_fixed_by_the_config():
  """Sampler calls use two row counts decided by the config, question prompts the slots of
  rollout.max_prompt_tokens, and BCQ/NCQ prompts one length that holds their budget and the
  chat template."""
  c = _config()
  c.update(questions_per_step=4)
  c.buffer.replay_per_step = 4
  c.zppo.update(max_prompt_tokens=368, bcq_per_question=1)
  c.rollout.max_prompt_tokens = 64
  shapes = stages.sample_shapes(c.questions_per_step, c.buffer, c.zppo, True,
                                 c.rollout.max_prompt_tokens, prompt_overhead=10)
  assert shapes["questions"] == {"rows": (4, 8), "prompt_slots": 64}
  assert shapes["reformulated"] == {"rows": (8, 16), "prompt_slots": 384}   # 368 + 10, to 16s
  assert rollouts.call_shape(shapes["reformulated"], 5) == {"rows": 8, "prompt_slots": 384}
  assert rollouts.call_shape(shapes["questions"], 9)["rows"] == 0  # past the most: own bucket
  # a vision-language run's prompts hold their images' tokens too (config.vision.max_tokens)
  shapes = stages.sample_shapes(c.questions_per_step, c.buffer, c.zppo, True,
                                c.rollout.max_prompt_tokens, prompt_overhead=10,
                                vision_tokens=16)
  assert shapes["questions"]["prompt_slots"] == 80
  assert shapes["reformulated"]["prompt_slots"] == 400


def _config(**zppo):
  c = run_config.method_config("zppo")
  c.zppo.update(zppo)
  return c


def test_reformulate_bcq_when_solved_ncq_when_not():
  rng = np.random.default_rng(0)
  hard = [_group([0, 0, 1, 0])]
  solved = {"q1": [Q.teacher_responses[0]]}
  out, skipped = stages.reformulate(_config().zppo, hard, solved, rng, len)
  assert [kind for kind, _, _ in out] == [BCQ] and skipped == 0
  text = out[0][2]
  assert text.startswith(Q.question) and "\\boxed{5}" in text and "\\boxed{7}" in text
  assert "teacher" not in text.lower() and "<think>" not in text
  out, _ = stages.reformulate(_config().zppo, hard, {"q1": []}, rng, len)
  assert [kind for kind, _, _ in out] == [NCQ]
  assert "\\boxed{7}" in out[0][2] and "\\boxed{5}" not in out[0][2]
  out, _ = stages.reformulate(_config(ncq_policy="always", bcq_per_question=2).zppo, hard,
                              solved, rng, len)
  assert [kind for kind, _, _ in out] == [BCQ, BCQ, NCQ]
  assert stages.reformulate(_config(bcq=False, ncq=False).zppo, hard, solved, rng, len) == ([], 0)


def test_a_reformulation_that_cannot_be_built_is_skipped_and_counted():
  """The reported crashes: a question longer than the BCQ/NCQ budget, and a group whose wrong
  rollouts are all empty, used to stop the run."""
  rng = np.random.default_rng(0)
  long_question = dataclasses.replace(Q, question="Compute 2 + 3. " + "Words. " * 600)
  hard = [_group([0, 0, 1, 0]), dataclasses.replace(_group([0, 0, 0, 0]), question=long_question)]
  empty = dataclasses.replace(_group([0, 0, 0, 0]), texts=["", "", "", ""])
  out, skipped = stages.reformulate(_config(ncq_policy="always").zppo, hard + [empty],
                                    {"q1": [Q.teacher_responses[0]]}, rng, len)
  assert [(kind, q.id) for kind, q, _ in out] == [(BCQ, "q1"), (NCQ, "q1")]
  assert skipped == 4  # the long question's BCQ and NCQ, the empty group's BCQ and NCQ


def test_teacher_response_replaces_a_wrong_rollout():
  class Tok:
    im_end_id = 99

    def encode(self, text):
      return [len(text)]

  group = _group([1, 0, 0])
  other = dataclasses.replace(_group([0, 0, 0]), question=dataclasses.replace(Q, id="q2"))
  c = run_config.method_config("grpo_teacher_response")
  solutions = {"q1": [Q.teacher_responses[0]]}
  new, unsolved = stages.teacher_in_group([group, other], solutions, Tok(), True, c.reward)
  np.testing.assert_array_equal(new.off_policy, [False, False, True])
  np.testing.assert_array_equal(new.rewards, [1, 0, 1])
  assert new.completions[2][-1] == 99 and new.texts[2] == Q.teacher_responses[0]
  assert new.completions[:2] == group.completions[:2]
  # a new group: the rollout group the buffer graded is left as it was, and so is a group
  # the teacher did not solve
  np.testing.assert_array_equal(group.rewards, [1, 0, 0])
  assert not group.off_policy.any() and group.texts[2] != Q.teacher_responses[0]
  np.testing.assert_array_equal(unsolved.rewards, [0, 0, 0])


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))))
def test_every_config_validates(path):
  module = run_config.config_module(os.path.basename(path))
  config = module.get_config()
  run_config.validate(config)
  if os.path.basename(path) in ("tiny.py", "tiny_sft.py", "tiny_vlm.py", "tiny_vlm_sft.py"):
    return
  for arg in ("size=0.8b", "size=9b,mesh=gpu_8xh100", "buffer"):
    big = module.get_config(arg)
    run_config.validate(big)
  assert module.get_config("size=2b").student.path.endswith("Qwen3.5-2B")


def test_real_chunk_rows_split_over_the_recommended_slices():
  """Each real config's chunk splits evenly over the batch shards of the slices the README
  recommends (32 chips of a v5p-64, a v6e-32 for the 0.8B and 2B and a v6e-64 for the 4B
  and 9B, 16 GPUs of 2 nodes), and every size takes 4 rows a chip on v5p (the 4B's and
  9B's train steps compile to 59.3 and 69.5 GiB there once the delta rule runs chunk by
  chunk; 105.6 and 107.5 GiB, refused, before)."""
  shards = {"tpu_v5p": dict.fromkeys(run_config.SIZES, 32),
            "tpu_v6e": {"0.8b": 32, "2b": 32, "4b": 64, "9b": 64},
            "gpu_8xh100": dict.fromkeys(run_config.SIZES, 16)}
  for mesh, devices in shards.items():
    for size in run_config.SIZES:
      rows = run_config.method_config("zppo", f"size={size},mesh={mesh}").train.chunk_rows
      assert rows % devices[size] == 0, (mesh, size, rows)
  rows = lambda size: run_config.method_config("zppo", f"size={size},mesh=tpu_v5p").train.chunk_rows
  assert rows("4b") == rows("9b") == rows("2b") == rows("0.8b") == 128


def test_method_options():
  assert run_config.method_config("zppo", "bcq_only").zppo.ncq is False
  assert run_config.method_config("zppo", "ncq_always").zppo.ncq_policy == "always"
  assert run_config.method_config("zppo", "capacity=7").buffer.capacity == 7
  assert run_config.method_config("grpo").buffer.enabled is False
  assert run_config.method_config("on_policy_distill", "buffer").buffer.enabled is True
  with pytest.raises(ValueError, match="unknown config option"):
    run_config.method_config("zppo", "capacty=7")
  vlm = run_config.method_config("zppo", "size=0.8b,vlm,root=/ckpt")
  assert vlm.vision.enabled and not vlm.vision.train_tower and vlm.vision.max_tokens > 0
  assert vlm.data.source == "/ckpt/data/vlm_train.parquet"
  assert [b.split(";format=")[1] for b in vlm.eval.benchmarks] == ["mathvista", "chartqa", "mmmu"]
  run_config.validate(vlm)
  with pytest.raises(ValueError, match="the vlm option needs size="):
    run_config.method_config("zppo", "vlm")
  c = run_config.method_config("grpo")
  c.zppo.bcq = True
  with pytest.raises(ValueError, match="zppo.bcq/ncq are on, but method 'grpo'"):
    run_config.validate(c)


def test_command_line_names_bad_overrides(tmp_path):
  """An unknown key or a wrong type fails before anything loads, naming the field."""
  def run(*flags):
    return subprocess.run([sys.executable, "-m", "zppo_jax.train", "--config", "configs/tiny.py",
                           "--workdir", str(tmp_path), *flags], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  bad_key = run("--config.buffer.capacityy=3")
  assert bad_key.returncode != 0 and "capacityy" in bad_key.stderr
  bad_type = run("--config.total_steps=many")
  assert bad_type.returncode != 0 and "total_steps" in bad_type.stderr
  bad_value = run("--config.teacher.source=oracle")
  assert bad_value.returncode != 0 and "config.teacher.source must be one of" in bad_value.stderr


def test_every_method_is_one_consistent_entry():
  """Each entry's loss and advantage estimator exist, its preset validates, and the fields
  it fixes follow it (a new method is one entry)."""
  assert sorted(methods.METHODS) == sorted(m.name for m in methods.METHODS.values())
  for method in methods.METHODS.values():
    assert method.loss in losses.POLICY_LOSSES and method.advantage in losses.ADVANTAGES
    c = run_config.method_config(method.name)
    run_config.validate(c)
    assert c.method == method.name and c.train.loss.name == method.loss
    assert c.buffer.enabled == method.buffer
    assert bool(c.zppo.bcq and c.zppo.ncq) == method.reformulates
    assert (c.teacher.source != "none") == bool(method.teacher)
  with pytest.raises(ValueError, match="config.method='ppo' is not a method"):
    run_config.method_config("ppo")


@pytest.mark.parametrize("field,value,message", [
    ("train.loss.name", "grpo", "trains with 'on_policy_distill'"),
    ("teacher.source", "dataset", "scores with the teacher model"),
    ("method", "dpo", "not a method of zppo_jax/rl/methods.py"),
    ("model.family", "llama", "config.model.family must be one of"),
])
def test_a_field_contradicting_the_method_is_named(field, value, message):
  c = run_config.method_config("on_policy_distill")
  *path, key = field.split(".")
  node = c
  for part in path:
    node = node[part]
  node[key] = value
  with pytest.raises(ValueError, match=message):
    run_config.validate(c)


def test_advantage_estimators():
  rewards = [np.array([1.0, 0.0, 0.0, 1.0], np.float32), np.array([1.0, 1.0, 1.0, 1.0])]
  cfg = run_config.train_config().loss
  group = losses.ADVANTAGES["group"](rewards, cfg)
  np.testing.assert_allclose(group[0], [1, -1, -1, 1], atol=1e-5)  # (r - 0.5) / 0.5
  np.testing.assert_array_equal(group[1], [0, 0, 0, 0])            # no variance, no signal
  none = losses.ADVANTAGES["none"]([np.ones(3), np.ones(5)], cfg)
  assert [a.tolist() for a in none] == [[0.0] * 3, [0.0] * 5]


def test_the_run_config_builds_without_jax():
  """Configs load (and validate) in a process that never imports JAX or a model."""
  code = ("import sys; from zppo_jax import run_config; "
          "c = run_config.config_module('tiny.py').get_config(); run_config.validate(c); "
          "bad = [m for m in ('jax', 'optax', 'flax', 'zppo_jax.models.qwen3_5') "
          "if m in sys.modules]; assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
