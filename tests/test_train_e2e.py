"""The whole ZPPO loop on the shipped tiny models (configs/tiny.py, a few steps): the paper's
mechanics all happen, and a killed run resumes to exactly the uninterrupted result."""

import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from zppo_jax import evaluate, evaluation, metric_writer, run_config, sharding, train
from zppo_jax.models import qwen3_5

STEPS = 4
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(workdir, steps=STEPS):
  c = run_config.config_module("tiny.py").get_config()
  c.total_steps = steps
  c.checkpoint.every = 2
  c.log.progress = False
  c.log.samples_every = 2
  c.export.dir = os.path.join(workdir, "export")
  c.eval.update(every=2, k=2, benchmarks=("heldout=synthetic:heldout;limit=6",
                                          "transfer=synthetic:transfer;limit=4"))
  return c


def _metrics(workdir):
  return metric_writer.read(os.path.join(workdir, "metrics.jsonl"))


def _comparable(lines):
  """Everything but wall-clock figures and this host's grading counters."""
  return [{k: v for k, v in line.items()
           if not k.startswith(("time/", "throughput/", "grade/", "compile/"))}
          for line in lines]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  trainer = train.Trainer(_config(workdir), workdir)
  trainer.run()
  return workdir, _metrics(workdir), jax.device_get(trainer.learner.state.params)


def test_tiny_zppo_loop_admits_reformulates_graduates(straight):
  workdir, all_lines, params = straight
  # one line per step, then the final held-out evaluation on a line of its own
  assert [line["step"] for line in all_lines] == list(range(STEPS)) + [STEPS]
  lines = all_lines[:STEPS]
  total = lambda key: sum(line[key] for line in lines)  # noqa: E731
  assert total("buffer/admitted") > 0
  assert total("bcq/count") > 0 and total("ncq/count") > 0    # both prompt kinds built ...
  for line in lines:                                           # ... and trained on: G rows each
    groups = (line["questions/new"] + line["questions/replayed"] + line["bcq/count"]
              + line["ncq/count"])
    assert line["train/rows"] == 8 * groups
    # rows of zero-variance groups (advantage 0, no gradient under GRPO) run no program
    flat = round(line["zero_advantage_fraction"] * groups)
    assert line["train/trained_rows"] == 8 * (groups - flat)
    assert line["train/trained_tokens"] <= line["train/tokens"]
  assert lines[-1]["buffer/graduated_total"] >= 1
  assert total("questions/replayed") > 0
  assert all(math.isfinite(line["train/loss"]) for line in lines)
  # diagnostics: the rollouts' entropy estimate, sampler and train step agreeing on the
  # sampled tokens' log-probs, the KL to the starting student (tiny.py: log.kl_to_start),
  # 0 at the first step, which trains the starting params
  assert all(0 < line["rollout/entropy"] < math.log(512) for line in lines)
  trained = [line for line in lines if line["train/trained_rows"]]
  assert trained and all(line["train/logprob_mismatch"] < 1e-4 for line in trained)
  drift = [line["train/kl_to_start"] for line in trained]
  assert all(d >= 0 for d in drift) and drift[-1] > 0
  if lines[0]["train/trained_rows"]:
    assert lines[0]["train/kl_to_start"] == pytest.approx(0, abs=1e-6)
  assert all(0 <= line["reward/mean"] <= 1 for line in lines)
  # grading is timed within the step, and the tiny task's integer answers never need sympy
  assert all(0 < line["time/grade"] < line["time/step"] for line in lines)
  assert total("grade/timeouts") == 0
  # Every program of the loop was built before the first step (Trainer.precompile: train
  # chunks of each length, sampler calls of each row bucket, the evaluation's), so after the
  # first step the cumulative counts from jax.monitoring stay put through steps, an
  # evaluation and checkpoints. (Within the first step orbax builds its own small copy
  # programs for the first save on this 8-device host.)
  built = [line["compile/count"] + line["compile/cache_hits"] for line in lines]
  assert built[0] > 0 and built[1:] == [built[1]] * (len(built) - 1), built
  sample = metric_writer.read(os.path.join(workdir, "samples.jsonl"))[0]
  assert {"prompt", "response", "reward", "answer"} <= set(sample)
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  # the exported student is a Hugging Face checkpoint holding the trained params
  export = os.path.join(workdir, "export")
  assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(export))
  _, loaded = qwen3_5.load_hf_checkpoint(export)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded), params)


def test_killed_run_resumes_exactly(straight, tmp_path, monkeypatch):
  """Killed during step 3 (the last checkpoint is after step 2): rerunning the same config
  gives the uninterrupted run's metrics and params bit for bit."""
  _, want_lines, want_params = straight
  workdir = str(tmp_path)
  step = train.Trainer.rl_step

  def killed_at_3(self):
    if self.step == 3:
      raise KeyboardInterrupt("killed")
    return step(self)

  monkeypatch.setattr(train.Trainer, "rl_step", killed_at_3)
  with pytest.raises(KeyboardInterrupt):
    train.Trainer(_config(workdir), workdir).run()
  assert [line["step"] for line in _metrics(workdir)] == [0, 1, 2]
  monkeypatch.setattr(train.Trainer, "rl_step", step)

  trainer = train.Trainer(_config(workdir), workdir)
  assert trainer.step == 2  # resumed from the checkpoint after step 2
  trainer.run()
  assert _comparable(_metrics(workdir)) == _comparable(want_lines)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(trainer.learner.state.params), want_params)


def test_held_out_evaluation_during_training_and_from_the_checkpoint(straight):
  """Every eval.every steps (and at the end) the held-out sets land in metrics.jsonl and
  eval/step_N.json; `zppo_jax.evaluate` on the workdir's newest checkpoint gives the final
  evaluation again (the same params, the same sampling seeds)."""
  workdir, lines, params = straight
  evaluated = {line["step"]: line for line in lines if "eval/heldout/avg@2" in line}
  assert sorted(evaluated) == [0, 2, STEPS]
  for line in evaluated.values():
    assert line["eval/heldout/questions"] == 6 and line["eval/transfer/questions"] == 4
    assert 0 <= line["eval/heldout/avg@2"] <= line["eval/heldout/pass@2"] <= 1
  assert sorted(os.listdir(os.path.join(workdir, "eval"))) == [
      f"step_{s:06d}.{ext}" for s in (0, 2, STEPS) for ext in ("json", "md")]
  config = _config(workdir)
  mesh = sharding.make_mesh(tuple(config.mesh.shape))
  model_config, restored, tokenizer_dir = evaluate.load_policy(config, workdir, mesh)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), params)
  from zppo_jax.data.tokenizer import Tokenizer
  from zppo_jax.sampler import Sampler
  evaluator = evaluation.Evaluator.from_config(config, Tokenizer.load(tokenizer_dir),
                                               Sampler(model_config, mesh=mesh))
  again = evaluation.metrics(evaluator.run(restored, config.seed), ())
  assert again == {k: v for k, v in evaluated[STEPS].items() if k.startswith("eval/")}


def test_the_workdir_refuses_another_run_and_an_export_never_destroys_it(straight):
  """The reported losses: another method in the same workdir, and `--export_only` pointed at
  the workdir (which used to leave only the exported files)."""
  workdir, lines, _ = straight
  before = sorted(os.listdir(workdir))
  other = _config(workdir)
  other.zppo.bcq = other.zppo.ncq = False
  other.name = "zppo-without-reformulations"  # the ablation, under a label of its own
  with pytest.raises(ValueError, match=r"zppo.bcq: True -> False"):
    train.Trainer(other, workdir)  # refused before any model is loaded
  out = subprocess.run(
      [sys.executable, "-m", "zppo_jax.train", "--config=configs/tiny.py",
       f"--workdir={workdir}", "--export_only", f"--config.export.dir={workdir}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode != 0 and "non-empty directory that no export wrote" in out.stderr
  assert sorted(os.listdir(workdir)) == before
  assert _metrics(workdir) == lines


def test_other_policies_are_scored_per_chunk(tmp_path):
  """On-policy distillation with a KL to the frozen reference and two passes over each
  batch: the teacher's, the reference's and the old log-probs are scored chunk by chunk, and
  every program of the loop, scores included, is built before the first step: none is
  compiled (or loaded) while the run goes."""
  c = run_config.config_module("tiny.py").get_config("method=on_policy_distill")
  c.update(total_steps=3, num_iterations=2)
  c.train.loss.beta = 0.01
  c.train.optimizer.warmup_steps = 0  # the first pass moves the params: the KL is not 0
  c.log.update(progress=False, tensorboard=False)
  c.eval.every = 0
  c.export.at_end = False
  trainer = train.Trainer(c, str(tmp_path))
  built = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, _, fun_name="?", **__: built.append(fun_name)
      if event == "/jax/core/compile/backend_compile_duration" else None)
  trainer.run()
  ours = {"jit(score)", "jit(accumulate)", "jit(apply_gradients)", "jit(<lambda>)",
          "jit(prefill)", "jit(decode)"}
  assert not ours & set(built), built
  lines = _metrics(str(tmp_path))
  assert len(lines) == 3
  for line in lines:
    assert math.isfinite(line["train/loss"]) and line["train/kl"] > 0
    assert line["train/reverse_kl"] != 0 and line["train/chunks"] >= 1
    # the reference is the starting student: the drift diagnostic is the loss's KL term
    assert line["train/kl_to_start"] == pytest.approx(line["train/kl"], rel=1e-5)
    # the first pass scores the sampled tokens with the params that sampled them
    assert line["train/logprob_mismatch"] < 1e-4
    assert line["rollout/entropy"] > 0
