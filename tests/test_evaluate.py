"""avg@k / pass@k, and `python -m zppo_jax.evaluate` on a known model and a fixed set whose
accuracy is known by construction."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from zppo_jax.data import boxed
from zppo_jax import evaluate, evaluation, run_config, sharding

from zppo_jax.rl import rewards, rollouts
from zppo_jax.data import benchmarks
from zppo_jax.data.tokenizer import Tokenizer
from zppo_jax.models import qwen3_5
from zppo_jax.sampler import Sampler

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pass_at_k_and_avg_at_k_by_hand():
  correct = np.array([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool)
  got = evaluation.accuracy(correct, pass_at=(1, 2))
  assert got["avg@4"] == pytest.approx(5 / 12)
  assert got["pass@1"] == pytest.approx(5 / 12)          # pass@1 is the mean accuracy
  # question 1: 1 - C(3,2)/C(4,2) = 1/2; question 2: 1; question 3: 0
  assert got["pass@2"] == pytest.approx((0.5 + 1 + 0) / 3)
  assert got["pass@4"] == pytest.approx(2 / 3)
  assert evaluation.pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))
  with pytest.raises(ValueError, match="needs 1 <= k <= n"):
    evaluation.pass_at_k(4, 1, 5)


def test_evaluate_cli_gives_the_accuracy_known_by_construction(tmp_path):
  """The tiny student answers 8 held-out questions greedily; the set's gold answers are its
  own answers for the first 4 and something else for the last 4, so avg@2 = pass@2 = 1/2."""
  config = run_config.config_module("tiny.py").get_config()
  mesh = sharding.make_mesh(tuple(config.mesh.shape))
  model_config, params = qwen3_5.load_hf_checkpoint(config.student.path, mesh=mesh)
  tok = Tokenizer.load(config.student.path)
  questions = benchmarks.load(benchmarks.parse_spec("h=synthetic:heldout;limit=8"),
                              level_weights=config.data.level_weights)
  _, texts = rollouts.sample(
      Sampler(model_config, mesh=mesh), params, tok,
      rollouts.prompt_ids(tok, config.rollout, [q.question for q in questions]),
      enable_thinking=config.rollout.enable_thinking, num_samples=2, seed=0, max_new_tokens=config.rollout.max_new_tokens, temperature=0.0,
      top_p=1.0)
  said = [boxed.extract_boxed(rewards.answer_region(t) or "") for t in texts[::2]]
  assert all(said), said  # the tiny student boxes an answer to each of them
  rows = [{"id": q.id, "question": q.question,
           "answer": said[i] if i < 4 else f"{said[i]}0000"} for i, q in enumerate(questions)]
  path = tmp_path / "fixed.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = tmp_path / "out"
  subprocess.run(
      [sys.executable, "-m", "zppo_jax.evaluate", "--config=configs/tiny.py",
       f"--checkpoint={config.student.path}", f"--output={out}",
       f"--config.eval.benchmarks=('fixed={path}',)", "--config.eval.k=2",
       "--config.eval.temperature=0.0", "--config.eval.pass_at=(1,)"],
      cwd=REPO, check=True, capture_output=True, text=True,
      env={**os.environ, "PYTHONPATH": REPO})
  with open(out / "eval.json") as f:
    doc = json.load(f)
  fixed = doc["benchmarks"]["fixed"]
  assert fixed["questions"] == 8
  assert fixed["avg@2"] == 0.5 and fixed["pass@2"] == 0.5 and fixed["pass@1"] == 0.5
  assert [q["correct"] for q in fixed["per_question"]] == [2] * 4 + [0] * 4
  assert doc["settings"]["k"] == 2 and doc["settings"]["temperature"] == 0.0
  table = (out / "eval.md").read_text()
  assert "| fixed | 8 | 50.0 | 50.0 |" in table


def test_evaluator_rejects_bad_settings():
  config = run_config.config_module("tiny.py").get_config()
  config.eval.pass_at = (8,)
  with pytest.raises(ValueError, match=r"config.eval.pass_at within \[1, k\]"):
    evaluation.Evaluator.from_config(config, None, None)
  config.eval.pass_at = ()
  config.eval.benchmarks = ("a=synthetic:heldout", "a=synthetic:transfer")
  with pytest.raises(ValueError, match="names must differ"):
    evaluation.Evaluator.from_config(config, None, None)
  with pytest.raises(FileNotFoundError, match="--checkpoint /nonexistent: no such directory"):
    evaluate.load_policy(config, "/nonexistent", None)
