"""The trainer's pure stages (batch assembly, reformulation, teacher in the group) and the
method configs."""

import dataclasses
import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from zppo_jax import run_config, train
from zppo_jax.data.records import Question

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Q = Question(id="q1", question="Compute 2 + 3.", answer="5",
             teacher_responses=("<think>\n2 + 3 = 5\n</think>\nThe answer is $\\boxed{5}$.",))


def _group(rewards, kind=train.ORIGINAL, prompt=(1, 2, 3)):
  rewards = np.asarray(rewards, np.float32)
  texts = [f"<think>\nguess\n</think>\n\\boxed{{{5 if r else 7}}}" for r in rewards]
  comps = [[10 + i] * (2 + i) for i in range(len(rewards))]
  return train.Group(kind, Q, list(prompt), comps, [[-1.0] * len(c) for c in comps],
                     [False] * len(rewards), texts, rewards, np.zeros(len(rewards), bool))


def test_train_rows_carry_completions_and_advantages():
  groups = [_group([1, 0, 0]), _group([0, 1, 1], kind=train.BCQ, prompt=(4, 5))]
  adv = [np.array([1.0, -0.5, -0.5]), np.array([-1.0, 0.5, 0.5])]
  rows = train.train_rows(groups, adv)
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
  shapes = train.sample_shapes(c, prompt_overhead=10)
  assert shapes["questions"] == {"rows": (4, 8), "prompt_slots": 64}
  assert shapes["reformulated"] == {"rows": (8, 16), "prompt_slots": 512}
  assert train._call_shape(shapes["reformulated"], 5) == {"rows": 8, "prompt_slots": 512}
  assert train._call_shape(shapes["questions"], 9)["rows"] == 0  # past the most: own bucket


def _config(**zppo):
  c = run_config.method_config("zppo")
  c.zppo.update(zppo)
  return c


def test_reformulate_bcq_when_solved_ncq_when_not():
  rng = np.random.default_rng(0)
  hard = [_group([0, 0, 1, 0])]
  solved = {"q1": [Q.teacher_responses[0]]}
  out, skipped = train.reformulate(_config(), hard, solved, rng, len)
  assert [kind for kind, _, _ in out] == [train.BCQ] and skipped == 0
  text = out[0][2]
  assert text.startswith(Q.question) and "\\boxed{5}" in text and "\\boxed{7}" in text
  assert "teacher" not in text.lower() and "<think>" not in text
  out, _ = train.reformulate(_config(), hard, {"q1": []}, rng, len)
  assert [kind for kind, _, _ in out] == [train.NCQ]
  assert "\\boxed{7}" in out[0][2] and "\\boxed{5}" not in out[0][2]
  out, _ = train.reformulate(_config(ncq_policy="always", bcq_per_question=2), hard, solved,
                             rng, len)
  assert [kind for kind, _, _ in out] == [train.BCQ, train.BCQ, train.NCQ]
  assert train.reformulate(_config(bcq=False, ncq=False), hard, solved, rng, len) == ([], 0)


def test_a_reformulation_that_cannot_be_built_is_skipped_and_counted():
  """The reported crashes: a question longer than the BCQ/NCQ budget, and a group whose wrong
  rollouts are all empty, used to stop the run."""
  rng = np.random.default_rng(0)
  long_question = dataclasses.replace(Q, question="Compute 2 + 3. " + "Words. " * 600)
  hard = [_group([0, 0, 1, 0]), dataclasses.replace(_group([0, 0, 0, 0]), question=long_question)]
  empty = dataclasses.replace(_group([0, 0, 0, 0]), texts=["", "", "", ""])
  out, skipped = train.reformulate(_config(ncq_policy="always"), hard + [empty],
                                   {"q1": [Q.teacher_responses[0]]}, rng, len)
  assert [(kind, q.id) for kind, q, _ in out] == [(train.BCQ, "q1"), (train.NCQ, "q1")]
  assert skipped == 4  # the long question's BCQ and NCQ, the empty group's BCQ and NCQ


def test_teacher_response_replaces_a_wrong_rollout():
  class Tok:
    im_end_id = 99

    def encode(self, text):
      return [len(text)]

  group = _group([1, 0, 0])
  c = run_config.method_config("grpo_teacher_response")
  train.teacher_in_group([group], {"q1": [Q.teacher_responses[0]]}, Tok(), c)
  np.testing.assert_array_equal(group.off_policy, [False, False, True])
  np.testing.assert_array_equal(group.rewards, [1, 0, 1])
  assert group.completions[2][-1] == 99 and group.texts[2] == Q.teacher_responses[0]


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))))
def test_every_config_validates(path):
  module = run_config.config_module(os.path.basename(path))
  config = module.get_config()
  train.validate(config)
  if os.path.basename(path) in ("tiny.py", "tiny_sft.py"):
    return
  for arg in ("size=0.8b", "size=9b,mesh=gpu_8xh100", "buffer"):
    big = module.get_config(arg)
    train.validate(big)
  assert module.get_config("size=2b").student.path.endswith("Qwen3.5-2B")


def test_method_options():
  assert run_config.method_config("zppo", "bcq_only").zppo.ncq is False
  assert run_config.method_config("zppo", "ncq_always").zppo.ncq_policy == "always"
  assert run_config.method_config("zppo", "capacity=7").buffer.capacity == 7
  assert run_config.method_config("grpo").buffer.enabled is False
  assert run_config.method_config("on_policy_distill", "buffer").buffer.enabled is True
  with pytest.raises(ValueError, match="unknown config option"):
    run_config.method_config("zppo", "capacty=7")
  c = run_config.method_config("grpo")
  c.zppo.bcq = True
  with pytest.raises(ValueError, match="teacher.source"):
    train.validate(c)


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
