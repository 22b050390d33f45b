"""ZPPO with images: the tiny VLMs (grown from the tiny text models, `tiny_vlm.grow`) on the
drawn arithmetic task. Every prompt made of a question (its own, its BCQ's and NCQ's, the
teacher's) carries its images; the buffer holds their keys; the train step scores the rows
after the images; the tower stays frozen and is exported with the model."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from zppo_jax import run_config, tiny_vlm, train
from zppo_jax.data import images, visual
from zppo_jax.data.records import parse_row
from zppo_jax.data.tokenizer import Tokenizer
from zppo_jax.models import qwen3_5
from zppo_jax.rl import rollouts
from zppo_jax.sampler import LENGTH, Completions, padded_size


@pytest.fixture(scope="module")
def vlm_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("vlm")
  return {role: tiny_vlm.grow(os.path.join(tiny_vlm.ASSETS, f"tiny_{role}"), str(root / role),
                              seed=i)
          for i, role in enumerate(("student", "teacher"))}


def _config(dirs, workdir):
  """Short rollouts of the unread (not yet SFT-trained) VLM student; the teacher's responses
  are the dataset's, so that BCQ prompts are built (`test_the_teacher_sees_the_images` has
  the sampled teacher)."""
  c = run_config.config_module("tiny.py").get_config()
  c.student.path, c.teacher.path = dirs["student"], dirs["teacher"]
  c.teacher.source = "dataset"
  c.vision.enabled = True
  c.data.source = "synthetic:visual"
  c.data.level_weights = (1.0,)
  c.update(total_steps=2, questions_per_step=4)
  c.rollout.update(group_size=4, max_new_tokens=32)
  c.buffer.replay_per_step = 2
  c.zppo.ncq_policy = "always"          # both prompt kinds from every hard question
  c.reward.format_weight = 0.5          # well-formed or not: groups that disagree
  c.precompile = False                  # only the programs two steps use
  c.eval.update(every=0, benchmarks=("visual=synthetic:visual_heldout;limit=4",), k=2)
  c.log.update(progress=False, tensorboard=False)
  c.export.dir = os.path.join(workdir, "export")
  return c


@pytest.fixture(scope="module")
def run(vlm_dirs, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  trainer = train.Trainer(_config(vlm_dirs, workdir), workdir)
  tower = jax.device_get(trainer.learner.tower)
  steps = [trainer.rl_step() for _ in range(2)]
  return trainer, steps, tower, workdir


def test_every_prompt_of_a_question_carries_its_images(run):
  trainer, steps, _, _ = run
  config = trainer.model_config
  groups = [g for _, gs, _ in steps for g in gs]
  kinds = {g.kind for g in groups}
  assert {rollouts.ORIGINAL, rollouts.BCQ, rollouts.NCQ} <= kinds, kinds
  for g in groups:
    (pixels, grids), = [g.vision]
    expected = images.PromptImages(trainer.policies.images.settings)(g.question.images)[1]
    assert grids == expected[1]
    np.testing.assert_array_equal(pixels, expected[0])
    # the placeholders sit in the prompt, once per merged patch, before the question
    assert g.prompt.count(config.image_token_id) == sum(t * h * w for t, h, w in grids) // 4
  replayed = [g for g in groups if g.replayed]
  assert replayed and all(g.vision is not None for g in replayed)


def test_the_teacher_sees_the_images(vlm_dirs):
  """A sampled teacher is asked each hard question with its images, through its own tower."""
  trainer_config = _config(vlm_dirs, "")
  calls = []

  class Sampler:
    def generate(self, params, prompts, **kwargs):
      calls.append((prompts, kwargs["images"]))
      n = kwargs["num_samples"] * len(prompts)
      return Completions([[5]] * n, [[0.0]] * n, [LENGTH] * n)

  tok = Tokenizer.load(vlm_dirs["teacher"])
  loader = images.PromptImages(images.ImageSettings.load(vlm_dirs["teacher"]))
  hard = [parse_row(visual.VisualArithmeticSource(4).row(i), "row") for i in range(2)]
  trainer_config.teacher.source = "model"
  rollouts.teacher_pass(Sampler(), {}, tok, trainer_config.teacher, trainer_config.rollout,
                        trainer_config.reward, hard, 0, images=loader)
  (prompts, entries), = calls
  image_id = tok.backend.token_to_id("<|image_pad|>")
  for q, prompt, (pixels, grids) in zip(hard, prompts, entries):
    assert grids == loader(q.images)[1][1]
    assert prompt.count(image_id) == sum(t * h * w for t, h, w in grids) // 4


def test_the_buffer_holds_image_keys_not_pixels(run):
  trainer = run[0]
  state = json.dumps(dataclasses.asdict(trainer.buffer), default=str)
  assert visual.SCHEME in state and "pixel" not in state
  for entry in trainer.buffer.entries:
    assert all(ref.startswith(visual.SCHEME) for ref in entry.question["images"])


def test_the_language_model_learns_after_image_prompts_and_the_tower_stays(run):
  trainer, steps, tower, _ = run
  for metrics, _, _ in steps:
    assert np.isfinite(metrics["train/loss"]) and metrics["train/trained_rows"] > 0
    # rows scored by the train step as the sampler saw them: same images, same positions
    assert metrics["train/logprob_mismatch"] < 1e-4
  # the frozen tower's tokens travel compact: one per placeholder, not one per position
  g = steps[0][1][0]
  row = np.array([g.prompt + g.completions[0]])
  fields = trainer.learner.vision_fields(row, np.ones_like(row), [len(g.prompt)], [g.vision])
  placeholders = g.prompt.count(trainer.model_config.image_token_id)
  assert fields["vision_tokens"].shape == (1, padded_size(placeholders, 16),
                                           trainer.model_config.hidden_size)
  after = jax.device_get(trainer.learner.tower)
  jax.tree.map(np.testing.assert_array_equal, after, tower)
  path = trainer.export()
  config, params = qwen3_5.load_hf_checkpoint(path, vision=True)
  assert config.vision is not None
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params["visual"]), tower)
  assert os.path.isfile(os.path.join(path, "tokenizer.json"))


def test_image_questions_without_vision_are_refused(vlm_dirs, tmp_path):
  c = _config(vlm_dirs, str(tmp_path))
  c.vision.enabled = False
  trainer = train.Trainer(c, str(tmp_path))
  with pytest.raises(ValueError, match="has images .* config.vision.enabled is False"):
    trainer.rl_step()


def test_a_trained_tower_scores_as_the_frozen_one_and_learns(vlm_dirs, tmp_path):
  """With vision.train_tower the train step runs the tower on each row's images: the same
  log-probs as the frozen path's precomputed tokens, and one step moves the tower."""
  from zppo_jax import logprobs
  from zppo_jax.models.qwen3_5 import multimodal
  c = _config(vlm_dirs, str(tmp_path))
  c.vision.train_tower = True
  c.train.optimizer.warmup_steps = 0
  c.total_steps = 1
  trainer = train.Trainer(c, str(tmp_path))
  config, learner = trainer.model_config, trainer.learner
  start = jax.device_get(learner.state.params["visual"])
  metrics, groups, _ = trainer.rl_step()
  assert metrics["train/trained_rows"] > 0 and metrics["train/logprob_mismatch"] < 1e-4
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                       jax.device_get(learner.state.params["visual"]), start)
  assert max(jax.tree.leaves(moved)) > 0
  # one chunk of two groups' rows, scored both ways at the same params
  g1, g2 = groups[0], groups[1]
  rows = [(g.prompt + g.completions[0], len(g.prompt), g.vision) for g in (g1, g2)]
  length = max(len(r) for r, _, _ in rows)
  tokens = np.zeros((2, length), np.int32)
  mask = np.zeros((2, length), np.int32)
  for i, (r, _, _) in enumerate(rows):
    tokens[i, :len(r)], mask[i, :len(r)] = r, 1
  fields = learner.vision_fields(tokens, mask, [n for _, n, _ in rows], [v for _, _, v in rows])
  params = learner.state.params
  slots = int(fields["vision_mask"].sum(1).max())
  vision_tokens = np.concatenate([np.asarray(multimodal.vision_tokens(
      config, params, tokens[i:i + 1], v[0], v[1], slots=slots)) for i, (_, _, v) in
      enumerate(rows)])
  kwargs = dict(positions=fields["positions"], vision_mask=fields["vision_mask"])
  a = logprobs.token_scores(config, params, tokens, mask, tower_inputs={
      k: v for k, v in fields.items() if k.startswith(multimodal.TOWER_PREFIX)}, **kwargs)
  b = logprobs.token_scores(config, params, tokens, mask, vision_tokens=vision_tokens, **kwargs)
  np.testing.assert_allclose(np.asarray(a["logprobs"]) * mask, np.asarray(b["logprobs"]) * mask,
                             atol=1e-5, rtol=1e-5)  # float32 round-off of two op orders
  path = trainer.export()
  _, exported = qwen3_5.load_hf_checkpoint(path, vision=True)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(exported["visual"]),
               jax.device_get(params["visual"]))


def _video_question(index: int):
  """A drawn question shown as a clip instead: its image as 4 frames at 2 fps."""
  q = parse_row(visual.VisualArithmeticSource(4).row(index), "row")
  return dataclasses.replace(q, images=(), videos=("|".join(q.images * 4) + "|fps=2",))


@pytest.mark.parametrize("kind", ["image", "video"])
def test_transformers_answers_a_drawn_question_as_our_sampler_does(vlm_dirs, kind):
  """The tiny VLM repository (config.json, safetensors, tokenizer, image and video processor
  configs) is one transformers loads as Qwen3_5ForConditionalGeneration, and its greedy
  answer to a drawn question's chat prompt, with the question as an image or as a clip
  (frames behind their timestamps), equals zppo_jax's sampler's."""
  import torch
  import transformers
  from zppo_jax.data.video import VideoSettings
  from zppo_jax.models.qwen3_5 import multimodal
  from zppo_jax.sampler import Sampler
  path = vlm_dirs["student"]
  model = transformers.Qwen3_5ForConditionalGeneration.from_pretrained(path).eval()
  config, params = qwen3_5.load_hf_checkpoint(path, vision=True)
  tok = Tokenizer.load(path)
  loader = images.PromptImages(images.ImageSettings.load(path),
                               video=VideoSettings.load(path))
  q = parse_row(visual.VisualArithmeticSource(4).row(1), "row")
  if kind == "video":
    q = _video_question(1)
  text, (pixels, grids) = loader(q.images, q.videos)
  prompt = tok.encode_prompt(q.question, vision=text)
  if kind == "image":
    inputs = dict(pixel_values=torch.from_numpy(pixels), image_grid_thw=torch.tensor(grids))
  else:  # transformers takes the clip's grid whole: (temporal patches, h, w)
    assert len(set(grids)) == 1 and len(grids) == 2 and "seconds>" in text
    inputs = dict(pixel_values_videos=torch.from_numpy(pixels),
                  video_grid_thw=torch.tensor([(len(grids),) + grids[0][1:]]))
  with torch.no_grad():
    want = model.generate(
        input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)),
        mm_token_type_ids=torch.tensor(multimodal.token_types(config, [prompt])), **inputs,
        max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(prompt):]
  got = Sampler(config).generate(params, [prompt], max_new_tokens=12, temperature=0.0,
                                 images=[(pixels, grids)])
  assert got.tokens[0] == want.tolist()


def test_a_runs_checkpoint_evaluates_with_the_frozen_tower_of_its_student(run):
  """A run's checkpoints hold what it trains; `policies.load(checkpoint=workdir,
  vision=True)` (zppo_jax.evaluate) takes the frozen tower from the student's repository."""
  from zppo_jax import policies
  trainer, _, tower, workdir = run
  trainer.save(force=True)
  trainer.checkpointer.close()
  config = trainer.config
  _, params = policies.load(config.model.family, config.student, trainer.mesh, trainer.rules,
                            checkpoint=workdir, vision=True)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params["visual"]), tower)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params["embed"]),
               jax.device_get(trainer.learner.state.params["embed"]))


def test_video_questions_train_as_the_sampler_saw_them(run):
  """A question with a clip: its frames' placeholders (behind their timestamps) in the
  prompt, sampled, and scored by the train step as the sampler saw them."""
  trainer = run[0]
  c, config = trainer.config, trainer.model_config
  questions = [_video_question(i) for i in range(4)]
  groups = rollouts.roll_out(
      trainer.policies.sampler, trainer.learner.sampling_params(), trainer.policies.tokenizer,
      c.rollout, c.reward, [(rollouts.ORIGINAL, q, q.question, False) for q in questions], 0,
      images=trainer.policies.images)
  for g in groups:
    _, grids = g.vision
    assert g.prompt.count(config.image_token_id) == 0
    assert g.prompt.count(config.video_token_id) == sum(t * h * w for t, h, w in grids) // 4
  metrics = trainer.learner.update(groups)
  assert metrics["train/trained_rows"] > 0 and metrics["train/logprob_mismatch"] < 1e-4


def test_on_policy_distillation_scores_image_rows_with_the_teachers_tower(vlm_dirs, tmp_path):
  """A method scored by the teacher model after image prompts: the teacher's log-probs come
  from its own tower's tokens (its image forward pass), and the student learns from them."""
  c = _config(vlm_dirs, str(tmp_path))
  run_config._method(c, "on_policy_distill", buffer=False)
  c.total_steps = 1
  trainer = train.Trainer(c, str(tmp_path))
  metrics, groups, _ = trainer.rl_step()
  assert np.isfinite(metrics["train/loss"]) and metrics["train/trained_rows"] > 0
  teacher = trainer.policies
  config = teacher.teacher_config
  g, completion = next((g, x) for g in groups for x in g.completions
                       if not {config.image_token_id, config.video_token_id} & set(x))
  rows = len(jax.devices())   # one per batch shard
  tokens = np.array([g.prompt + completion] * rows)
  mask = np.ones_like(tokens)
  chunk = {"tokens": tokens, "attention_mask": mask, **trainer.learner.vision_fields(
      tokens, mask, [len(g.prompt)] * rows, [g.vision] * rows)}
  got = np.asarray(trainer.learner._scored(chunk)["teacher_logprobs"])[0, 1:]
  logits = qwen3_5.forward(config, teacher.teacher_params, tokens[:1], mask[:1],
                           pixel_values=g.vision[0], image_grid_thw=g.vision[1])
  want = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits[0, :-1])),
                            tokens[0, 1:, None], -1)[:, 0]
  np.testing.assert_allclose(got, want, atol=1e-4)
