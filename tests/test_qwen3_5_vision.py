"""The vision tower against transformers' Qwen3_5VisionModel on a tiny random config: images
of different grids and a two-frame video packed in one call."""

import numpy as np
import pytest
import torch
from transformers.models.qwen3_5 import configuration_qwen3_5, modeling_qwen3_5

from zppo_jax.models.qwen3_5 import config as config_lib
from zppo_jax.models.qwen3_5 import vision

HF = dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=4, out_hidden_size=40,
          num_position_embeddings=16, patch_size=4, temporal_patch_size=2, spatial_merge_size=2,
          in_channels=3)
GRIDS = [(1, 4, 6), (1, 2, 2), (2, 4, 4)]   # (t, h, w) in patches; the last is a video


@pytest.fixture(scope="module")
def reference():
  torch.manual_seed(0)
  hf_config = configuration_qwen3_5.Qwen3_5VisionConfig(**HF)
  model = modeling_qwen3_5.Qwen3_5VisionModel(hf_config).eval()
  with torch.no_grad():  # non-trivial norms and biases, so every parameter matters
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return hf_config, model


def test_vision_tower_matches_transformers(reference):
  hf_config, model = reference
  config = config_lib.vision_from_hf_dict(hf_config.to_dict())
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  params = vision.from_hf(config, lambda name: state[name])
  patches = sum(t * h * w for t, h, w in GRIDS)
  pixels = np.random.default_rng(0).normal(size=(patches, config.patch_dim)).astype(np.float32)
  with torch.no_grad():
    want = model(torch.from_numpy(pixels), grid_thw=torch.tensor(GRIDS)).pooler_output.numpy()
  got = np.asarray(vision.encode(config, params, pixels, GRIDS))
  assert got.shape == want.shape == (patches // 4, HF["out_hidden_size"])
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_attention_stays_inside_each_frame(reference):
  """Changing one image's pixels leaves the other images' tokens exactly as they were."""
  hf_config, model = reference
  config = config_lib.vision_from_hf_dict(hf_config.to_dict())
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  params = vision.from_hf(config, lambda name: state[name])
  sizes = [t * h * w for t, h, w in GRIDS]
  pixels = np.random.default_rng(1).normal(size=(sum(sizes), config.patch_dim)).astype(
      np.float32)
  other = pixels.copy()
  other[:sizes[0]] += 1.0
  a = np.asarray(vision.encode(config, params, pixels, GRIDS))
  b = np.asarray(vision.encode(config, params, other, GRIDS))
  first = sizes[0] // 4
  assert np.abs(a[:first] - b[:first]).max() > 1e-3
  np.testing.assert_array_equal(a[first:], b[first:])


def test_bad_configs_grids_and_tensors_are_named(reference):
  with pytest.raises(ValueError, match="vision_config: missing field"):
    config_lib.vision_from_hf_dict({"depth": 1})
  config = config_lib.vision_from_hf_dict(HF)
  with pytest.raises(ValueError, match="multiples of spatial_merge_size=2"):
    vision.layout(config, [(1, 3, 4)])
  state = {k: v.detach().numpy() for k, v in reference[1].state_dict().items()}
  state["pos_embed.weight"] = np.zeros((9, 32), np.float32)  # a 3x3 grid, not the config's 4x4
  with pytest.raises(ValueError, match=r"model.visual.pos_embed.weight: shape \(9, 32\)"):
    vision.from_hf(config, lambda name: state[name])


# ------------------------------------------------------------------------------ the VLM

IMAGE, VIDEO, START, END = 95, 96, 97, 98   # placeholder and vision start / end ids


@pytest.fixture(scope="module")
def hf_vlm(tmp_path_factory):
  """A tiny Qwen3_5ForConditionalGeneration whose M-RoPE turns all three axes (8 rotary
  frequencies: height and width take 3 and 2 of them), saved in the official layout."""
  from conftest import TINY, _perturb
  torch.manual_seed(0)
  text = dict(TINY["tied_bias"], initializer_range=0.08,
              rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                               "partial_rotary_factor": 0.5, "mrope_section": [3, 3, 2]})
  hf_config = configuration_qwen3_5.Qwen3_5Config(
      text_config=text, vision_config=dict(HF, out_hidden_size=text["hidden_size"]),
      image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START,
      vision_end_token_id=END, tie_word_embeddings=True)
  model = _perturb(modeling_qwen3_5.Qwen3_5ForConditionalGeneration(hf_config).eval())
  path = tmp_path_factory.mktemp("hf_vlm")
  model.save_pretrained(path)
  return model, str(path)


def _vlm_batch():
  """Row 0: two images of different grids between text; row 1 (left-padded): a two-frame
  video, each frame behind its timestamp tokens."""
  image = lambda n: [START] + [IMAGE] * n + [END]
  frame = lambda stamp: [stamp, START] + [VIDEO] * 4 + [END]
  row0 = [5, 6, 7] + image(6) + [8, 9] + image(1) + [10, 11, 12]
  row1 = [13, 14] + frame(20) + frame(21) + [15, 16]
  length = max(len(row0), len(row1))
  ids = np.zeros((2, length), np.int64)
  mask = np.zeros((2, length), np.int64)
  for i, row in enumerate((row0, row1)):
    ids[i, length - len(row):], mask[i, length - len(row):] = row, 1
  rng = np.random.default_rng(2)
  patch_dim = 3 * 2 * 4 * 4
  images, videos = [(1, 4, 6), (1, 2, 2)], [(2, 4, 4)]
  pixels = rng.normal(size=(sum(t * h * w for t, h, w in images), patch_dim)).astype(np.float32)
  frames = rng.normal(size=(sum(t * h * w for t, h, w in videos), patch_dim)).astype(np.float32)
  return ids, mask, pixels, images, frames, videos


def test_image_and_video_prompts_match_transformers(hf_vlm):
  from zppo_jax.models import qwen3_5
  from zppo_jax.models.qwen3_5 import multimodal
  model, path = hf_vlm
  config, params = qwen3_5.load_hf_checkpoint(path, vision=True)
  assert config.vision is not None and config.image_token_id == IMAGE
  ids, mask, pixels, images, frames, videos = _vlm_batch()
  with torch.no_grad():
    want = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 pixel_values=torch.from_numpy(pixels), image_grid_thw=torch.tensor(images),
                 pixel_values_videos=torch.from_numpy(frames),
                 video_grid_thw=torch.tensor(videos),
                 mm_token_type_ids=torch.tensor(multimodal.token_types(config, ids))
                 ).logits.numpy()
  got = np.asarray(qwen3_5.forward(config, params, ids, mask, pixel_values=pixels,
                                   image_grid_thw=images, pixel_values_videos=frames,
                                   video_grid_thw=videos))
  real = mask.astype(bool)
  np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)
  # the positions are what transformers computes (row 1's padding is 0 in both)
  hf_positions, _ = model.model.get_rope_index(
      torch.tensor(ids), torch.tensor(multimodal.token_types(config, ids)),
      torch.tensor(images), torch.tensor(videos), torch.tensor(mask))
  np.testing.assert_array_equal(multimodal.positions(config, ids, mask, images, videos),
                                hf_positions.numpy())


def test_placeholders_that_do_not_match_the_grids_are_named(hf_vlm):
  from zppo_jax.models import qwen3_5
  from zppo_jax.models.qwen3_5 import multimodal
  config = qwen3_5.load_config(hf_vlm[1])
  ids, mask, _, images, _, videos = _vlm_batch()
  with pytest.raises(ValueError, match=r"row 0: a run of 6 image placeholder tokens, but its "
                                       r"grid \(1, 2, 2\)"):
    multimodal.positions(config, ids, mask, images[::-1], videos)
  with pytest.raises(ValueError, match="more image grids than runs"):
    multimodal.positions(config, ids, mask, images + [(1, 2, 2)], videos)


def test_the_tower_loads_sharded_and_exports_with_the_model(hf_vlm, tmp_path):
  """`vision=True` places the tower on a mesh by the logical-axis rules and reads the same
  numbers as `from_hf`; an export writes the params' tower (here changed), which
  transformers then loads as the whole VLM."""
  import jax
  import safetensors.numpy
  import transformers
  from zppo_jax import sharding
  from zppo_jax.models import qwen3_5
  model, path = hf_vlm
  mesh = sharding.make_mesh((1, 4, 2), devices=jax.devices()[:8])
  config, params = qwen3_5.load_hf_checkpoint(path, mesh=mesh, vision=True)
  state = safetensors.numpy.load_file(f"{path}/model.safetensors")
  want = vision.from_hf(config.vision, lambda name: state["model.visual." + name])
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params["visual"],
               want)
  fc1 = params["visual"]["blocks"]["fc1"]["kernel"]  # [layers, embed, mlp]
  assert fc1.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  changed = dict(params, visual=jax.tree.map(lambda x: x * 1.1, params["visual"]))
  out = qwen3_5.save_hf_checkpoint(str(tmp_path / "vlm"), config, changed, source=path)
  reloaded = transformers.Qwen3_5ForConditionalGeneration.from_pretrained(out).eval()
  for name, p in model.state_dict().items():
    if name.startswith("model.visual."):
      torch.testing.assert_close(reloaded.state_dict()[name], p * 1.1, atol=1e-5, rtol=1e-5,
                                 msg=name)
  text_only = qwen3_5.save_hf_checkpoint(str(tmp_path / "text"), config,
                                         {k: v for k, v in params.items() if k != "visual"})
  with pytest.raises(qwen3_5.CheckpointError, match="no vision_config"):
    qwen3_5.load_hf_checkpoint(text_only, vision=True)


def test_sampler_answers_an_image_prompt_as_transformers_does(hf_vlm):
  """Greedy tokens after a prompt with two images equal transformers' generate; beside it a
  text-only prompt, and every sample of a prompt alike (the prefill is shared)."""
  from zppo_jax.models import qwen3_5
  from zppo_jax.models.qwen3_5 import multimodal
  from zppo_jax.sampler import Sampler
  model, path = hf_vlm
  config, params = qwen3_5.load_hf_checkpoint(path, vision=True)
  ids, mask, pixels, images, _, _ = _vlm_batch()
  prompt = ids[0][mask[0] > 0]
  with torch.no_grad():
    want = model.generate(
        input_ids=torch.tensor(prompt[None]), attention_mask=torch.ones(1, len(prompt)),
        pixel_values=torch.from_numpy(pixels), image_grid_thw=torch.tensor(images),
        mm_token_type_ids=torch.tensor(multimodal.token_types(config, prompt[None])),
        max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(prompt):]
  text = [5, 6, 7, 8]
  out = Sampler(config).generate(params, [prompt.tolist(), text], max_new_tokens=8,
                                 temperature=0.0, num_samples=2,
                                 images=[(pixels, images), None])
  assert out.tokens[0] == out.tokens[1] == want.tolist()
  with torch.no_grad():
    want_text = model.generate(input_ids=torch.tensor([text]), max_new_tokens=8,
                               do_sample=False, eos_token_id=None, pad_token_id=0)[0, 4:]
  assert out.tokens[2] == want_text.tolist()


def test_train_step_scores_rows_after_image_prompts(hf_vlm):
  """A batch carrying the frozen tower's tokens and the multimodal positions scores each
  token as the image forward pass does; the gradient reaches the language model (the
  tower's output is an input, so the tower stays frozen)."""
  import jax
  import jax.numpy as jnp
  from zppo_jax import logprobs, run_config
  from zppo_jax import train_step as ts
  from zppo_jax.models import qwen3_5
  from zppo_jax.models.qwen3_5 import multimodal
  _, path = hf_vlm
  config, params = qwen3_5.load_hf_checkpoint(path, vision=True)
  ids, mask, pixels, images, frames, videos = _vlm_batch()
  logits = qwen3_5.forward(config, params, ids, mask, pixel_values=pixels, image_grid_thw=images,
                           pixel_values_videos=frames, video_grid_thw=videos)
  logp = jax.nn.log_softmax(logits, axis=-1)
  want = np.take_along_axis(np.asarray(logp[:, :-1]), ids[:, 1:, None], -1)[..., 0]
  vision_tokens = multimodal.vision_tokens(config, params, ids, pixels, images, frames, videos)
  positions = np.moveaxis(multimodal.positions(config, ids, mask, images, videos), 0, -1)
  text = {k: v for k, v in params.items() if k != "visual"}
  batch = {"tokens": jnp.asarray(ids, jnp.int32), "attention_mask": jnp.asarray(mask),
           "vision_tokens": vision_tokens, "positions": jnp.asarray(positions)}
  cfg = run_config.train_config()
  cfg.compute_dtype = "float32"
  got = ts.score(text, batch, model_config=config, cfg=cfg)["logprobs"]
  real = mask[:, 1:].astype(bool)
  np.testing.assert_allclose(np.asarray(got)[:, 1:][real], want[real], atol=1e-4, rtol=0)
  grads = jax.grad(lambda p: jnp.sum(logprobs.token_scores(
      config, p, batch["tokens"], batch["attention_mask"], vision_tokens=vision_tokens,
      positions=batch["positions"])["logprobs"]))(text)
  assert float(jnp.abs(grads["embed"]).sum()) > 0
  assert float(jnp.abs(grads["full"]["q_proj"]).sum()) > 0


def test_image_batches_of_other_sizes_reuse_one_program(reference):
  """Patch, frame and frame-length counts are rounded up to buckets: a batch of other image
  sizes in the same buckets compiles nothing, and gives what it gives alone."""
  hf_config, model = reference
  config = config_lib.vision_from_hf_dict(hf_config.to_dict())
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  params = vision.from_hf(config, lambda name: state[name])
  rng = np.random.default_rng(4)
  first, second = [(1, 4, 6), (1, 2, 2)], [(1, 2, 12), (1, 4, 2)]
  pixels = lambda grids: rng.normal(size=(sum(t * h * w for t, h, w in grids),
                                          config.patch_dim)).astype(np.float32)
  vision.encode(config, params, pixels(first), first)
  compiled = vision._forward._cache_size()
  both = pixels(second)
  out = np.asarray(vision.encode(config, params, both, second))
  assert vision._forward._cache_size() == compiled
  with torch.no_grad():
    want = model(torch.from_numpy(both), grid_thw=torch.tensor(second)).pooler_output.numpy()
  np.testing.assert_allclose(out, want, atol=1e-4, rtol=0)
