"""The sampler against transformers `generate` and the model's own distribution."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch
from conftest import make_text_model
from jax.sharding import PartitionSpec as P

from zppo_jax import compilation, hlo, sampler, sharding
from zppo_jax.models import qwen3_5

MAX_NEW = 14


def _prompts(config, lengths, seed=0):
  rng = np.random.RandomState(seed)
  return [rng.randint(0, config.vocab_size, n).tolist() for n in lengths]


def _hf_generate(model, prompts, max_new, stop_ids):
  """transformers greedy generate on the left-padded batch, cut after each row's stop token."""
  width = max(map(len, prompts))
  ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
  mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
  with torch.no_grad():
    out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                         eos_token_id=list(stop_ids) or None, pad_token_id=0)
  rows = []
  for row in out[:, width:].tolist():
    ends = [i for i, t in enumerate(row) if t in stop_ids]
    rows.append(row[:ends[0] + 1] if ends else row)
  return rows


def _hf_logprobs(model, prompt, completion, temperature):
  """Teacher-forced log p(completion | prompt) per token, from transformers' logits / T."""
  with torch.no_grad():
    logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].double()
  logp = torch.log_softmax(logits / temperature, dim=-1)[len(prompt) - 1:-1]
  return logp[torch.arange(len(completion)), torch.tensor(completion)].numpy()


@pytest.fixture(scope="module")
def periodic(tmp_path_factory):
  model = make_text_model("periodic")
  path = tmp_path_factory.mktemp("sampler_periodic")
  model.save_pretrained(path)
  config, params = qwen3_5.load_hf_checkpoint(str(path))
  return model, config, params, sampler.Sampler(config)


def test_greedy_matches_transformers_generate(hf_text):
  model, path = hf_text
  config, params = qwen3_5.load_hf_checkpoint(path)
  prompts = _prompts(config, [3, 11, 17, 30])
  free = _hf_generate(model, prompts, MAX_NEW, ())
  # Stop tokens taken from the completions themselves, so some rows stop and others run on.
  stop_ids = (free[1][4], free[3][9])
  expected = _hf_generate(model, prompts, MAX_NEW, stop_ids)
  out = sampler.generate(config, params, prompts, max_new_tokens=MAX_NEW, temperature=0.0,
                         stop_token_ids=stop_ids)
  assert out.tokens == expected
  assert out.finish_reason == [
      sampler.STOP if row[-1] in stop_ids else sampler.LENGTH for row in expected]
  assert sampler.STOP in out.finish_reason and [len(r) for r in out.logprobs] == list(
      map(len, expected))
  for prompt, row, lps in zip(prompts, out.tokens, out.logprobs):
    np.testing.assert_allclose(lps, _hf_logprobs(model, prompt, row, 1.0), atol=1e-4, rtol=0)


def test_sampled_logprobs_match_teacher_forced_forward(periodic):
  model, config, params, smp = periodic
  prompts = _prompts(config, [5, 13, 2], seed=1)
  out = smp.generate(params, prompts, max_new_tokens=MAX_NEW, temperature=0.7, top_p=0.9,
                     num_samples=2, seed=3)
  assert len(out.tokens) == 6 and all(len(r) == MAX_NEW for r in out.tokens)
  assert out.finish_reason == [sampler.LENGTH] * 6
  for i, (row, lps) in enumerate(zip(out.tokens, out.logprobs)):
    np.testing.assert_allclose(lps, _hf_logprobs(model, prompts[i // 2], row, 0.7), atol=1e-4,
                               rtol=0)


def _expected_first_token(model, prompt, temperature, top_p=1.0, top_k=0):
  """The filtered next-token distribution, as transformers' temperature/top-k/top-p warpers."""
  with torch.no_grad():
    logits = model(input_ids=torch.tensor([prompt])).logits[0, -1].double() / temperature
  probs = torch.softmax(logits, -1).numpy()
  order = np.argsort(-probs)
  keep = np.zeros_like(probs, bool)
  kept = order[:top_k] if top_k else order
  mass = np.cumsum(probs[kept] / probs[kept].sum())
  keep[kept[(mass - probs[kept] / probs[kept].sum()) < top_p]] = True
  probs = np.where(keep, probs, 0.0)
  return probs / probs.sum()


@pytest.mark.parametrize("temperature,top_p,top_k", [(0.8, 0.9, 0), (1.5, 1.0, 6)])
def test_sampled_frequencies_match_model_distribution(periodic, temperature, top_p, top_k):
  """4096 draws of the first token against the filtered model distribution: a chi-square
  test at significance 1e-3 (fixed seed, so the outcome is deterministic), and no draw outside
  the kept set."""
  model, config, params, smp = periodic
  prompt = _prompts(config, [7], seed=2)[0]
  draws = 4096
  out = smp.generate(params, [prompt], max_new_tokens=1, temperature=temperature, top_p=top_p,
                     top_k=top_k, num_samples=draws, seed=11)
  counts = np.bincount([r[0] for r in out.tokens], minlength=config.vocab_size)
  probs = _expected_first_token(model, prompt, temperature, top_p, top_k)
  support = probs > 0
  assert counts[~support].sum() == 0
  assert 2 <= support.sum() < config.vocab_size  # the filter is active and leaves a choice
  # Pool the rare tokens so every expected count is at least 5, as chi-square needs.
  rare = support & (probs * draws < 5)
  observed = np.append(counts[support & ~rare], counts[rare].sum())
  expected = np.append(probs[support & ~rare], probs[rare].sum()) * draws
  if not rare.any():
    observed, expected = observed[:-1], expected[:-1]
  assert scipy.stats.chisquare(observed, expected).pvalue > 1e-3


def test_seeded_rows_do_not_depend_on_batch(periodic):
  """A prompt's samples depend on (seed, prompt index, sample index) only: the same seed
  gives the same completions, and extra prompts after it (another batch bucket, other padding)
  change nothing; another seed changes them."""
  _, config, params, smp = periodic
  prompts = _prompts(config, [6, 9, 4], seed=4)
  kwargs = dict(max_new_tokens=MAX_NEW, temperature=1.0, num_samples=2)
  alone = smp.generate(params, prompts[:1], seed=5, **kwargs)
  batched = smp.generate(params, prompts, seed=5, **kwargs)
  assert batched.tokens[:2] == alone.tokens
  np.testing.assert_allclose(batched.logprobs[0], alone.logprobs[0], atol=1e-5)
  assert alone.tokens[0] != alone.tokens[1]  # the n samples of a prompt differ
  assert smp.generate(params, prompts[:1], seed=6, **kwargs).tokens != alone.tokens


def test_num_samples_reuse_one_prefill(periodic):
  _, config, params, smp = periodic
  prompts = _prompts(config, [8, 3], seed=5)
  one = smp.generate(params, prompts, max_new_tokens=MAX_NEW, temperature=0.0)
  three = smp.generate(params, prompts, max_new_tokens=MAX_NEW, temperature=0.0, num_samples=3)
  assert three.tokens == [one.tokens[0]] * 3 + [one.tokens[1]] * 3


def test_no_recompilation_inside_a_bucket(periodic):
  _, config, params, _ = periodic
  smp = sampler.Sampler(config)
  smp.generate(params, _prompts(config, [5, 9]), max_new_tokens=10, temperature=0.7, top_p=0.9)
  assert smp.compile_count == 2  # one prefill, one decode loop
  # Other lengths, batch size, max_new_tokens, temperature, top_p and seed in the same buckets.
  smp.generate(params, _prompts(config, [16, 1], seed=1), max_new_tokens=16, temperature=1.3,
               top_p=0.5, seed=9)
  smp.generate(params, _prompts(config, [12, 7], seed=2), max_new_tokens=3, temperature=0.2,
               top_p=0.95)
  assert smp.compile_count == 2
  smp.generate(params, _prompts(config, [17, 2], seed=3), max_new_tokens=3, temperature=0.2,
               top_p=0.95)
  assert smp.compile_count == 4  # the next prompt bucket (32) compiles once more


def test_fixed_shapes_and_precompile(periodic):
  """A caller's fixed rows / prompt slots / new slots hold calls of any smaller size in one
  program, built in advance by `precompile`: the calls then compile nothing, and sample
  what they would have sampled in their own buckets."""
  _, config, params, _ = periodic
  smp = sampler.Sampler(config)
  shape = dict(rows=4, prompt_slots=32, new_slots=16)
  smp.precompile(params, 4, 32, max_new_tokens=16, temperature=0.7, top_p=0.9, **shape)
  built = compilation.COUNTS.metrics()
  traces = smp.compile_count
  fixed = [smp.generate(params, _prompts(config, lengths, seed=i), max_new_tokens=new,
                        temperature=0.7, top_p=0.9, seed=i, **shape)
           for i, (lengths, new) in enumerate([([5], 16), ([30, 2, 9], 4), ([1, 1, 1, 1], 9)])]
  assert smp.compile_count == traces
  after = compilation.COUNTS.metrics()
  assert after["compile/count"] + after["compile/cache_hits"] == (
      built["compile/count"] + built["compile/cache_hits"])
  own = smp.generate(params, _prompts(config, [30, 2, 9], seed=1), max_new_tokens=4,
                     temperature=0.7, top_p=0.9, seed=1)
  assert own.tokens == fixed[1].tokens


def test_sharded_generation_matches_one_device(periodic):
  """Batch over the data axis and heads over the tensor axis of a 4x1x2 CPU mesh."""
  _, config, params, smp = periodic
  mesh = sharding.make_mesh((4, 1, 2))
  sharded = sampler.Sampler(config, mesh=mesh)
  placed = jax.device_put(params, qwen3_5.param_shardings(config, mesh))
  prompts = _prompts(config, [5, 13, 2], seed=1)
  kwargs = dict(max_new_tokens=MAX_NEW, temperature=0.7, top_p=0.9, num_samples=2, seed=3)
  ref = smp.generate(params, prompts, **kwargs)
  out = sharded.generate(placed, prompts, **kwargs)
  assert sharded.shapes(3, 13, MAX_NEW)[0] % 2 == 0
  assert out.tokens == ref.tokens
  for a, b in zip(out.logprobs, ref.logprobs):  # sums split over devices round differently
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_relaid_out_bytes_are_the_copies_xla_makes_for_the_27b_decode():
  """The 27B teacher on 32 chips in the sampler's layout: XLA's TPU buffer assignment of its
  decode loop copies these stacks (local shapes), each padded to 128 lanes: [48, 5120, 544]
  gate and up, [48, 5120, 320] q/k/v, [48, 5120, 192] z, [16, 5120, 544] gate and up,
  [16, 5120, 32] k and v; not the conv kernels nor the stacks split along another dim."""
  mesh = jax.sharding.AbstractMesh((1, 32, 1), sharding.MESH_AXES)
  teacher = sampler.Sampler(qwen3_5.presets.config("27b"), mesh=mesh)
  lanes = lambda layers, width: layers * 5120 * width * 2      # bfloat16
  assert teacher.relaid_out_bytes(jnp.bfloat16) == (
      2 * lanes(48, 640) + lanes(48, 384) + lanes(48, 256) + 2 * lanes(16, 640)
      + 2 * lanes(16, 128))
  assert sampler.Sampler(qwen3_5.presets.config("27b")).relaid_out_bytes() == 0  # no mesh


def test_decode_keeps_the_weights_in_place_on_an_fsdp_mesh(tmp_path):
  """The sampler's params are split over every device along their features, embed whole
  (`sampler.decode_rules`), and a decode step multiplies by the slices where they lie:
  under FSDP's layout each step gathered every layer's weights whole (35 GB a step on each
  chip of a v5p-64 for the 27B teacher). The compiled loop gathers only the rows'
  activations, and the rows sample as on one device."""
  path = tmp_path / "vocab_136"   # a vocabulary the 8 devices divide (Qwen3.5's do)
  make_text_model("periodic", vocab_size=136).save_pretrained(path)
  config, params = qwen3_5.load_hf_checkpoint(str(path))
  smp = sampler.Sampler(config)
  mesh = sharding.make_mesh((1, 4, 2))
  sharded = sampler.Sampler(config, mesh=mesh)
  d, v, f = config.hidden_size, config.vocab_size, config.intermediate_size
  spec = lambda name: sharded.param_shardings["linear"]["mlp"][name].spec
  assert spec("gate_proj") == P(None, None, ("data", "fsdp", "tensor"))  # [layers, embed, mlp]
  assert spec("down_proj") == P(None, ("data", "fsdp", "tensor"), None)
  assert sharded.param_shardings["lm_head"].spec == P(None, ("data", "fsdp", "tensor"))
  # the FSDP-placed params of a caller are moved to that layout once a call
  placed = jax.device_put(params, qwen3_5.param_shardings(config, mesh))
  prompts = _prompts(config, [5, 13, 2, 7], seed=2)
  kwargs = dict(max_new_tokens=MAX_NEW, temperature=0.7, top_p=0.9, num_samples=2, seed=4)
  out, ref = sharded.generate(placed, prompts, **kwargs), smp.generate(params, prompts, **kwargs)
  assert out.tokens == ref.tokens
  rows, prompt_slots, new_slots = sharded.shapes(4, 13, MAX_NEW)
  n = rows * 2
  cache = jax.eval_shape(lambda: qwen3_5.init_cache(config, n, prompt_slots + new_slots,
                                                    jnp.float32))
  decode = sharded._decode_program(rows, prompt_slots, new_slots, 2, jnp.float32, 8, 0, True,
                                   False)
  text = decode.lower(jax.device_put(params, sharded.param_shardings), cache,
                      jax.ShapeDtypeStruct((n, v), jnp.float32), np.ones(n, bool),
                      np.uint32(0), np.float32(0.7), np.float32(0.9), np.int32(new_slots),
                      np.full(8, -1, np.int32)).compile().as_text()
  gathered = [math.prod(map(int, dims.split(","))) for dims in
              re.findall(r"= \w+\[([\d,]+)\]\S* all-gather\(", text)]
  # the largest activation a step gathers is the rows' logits [N, V]; a weight is larger
  # (an MLP weight d x f = 6144 elements, the head d x v/2 = 4352, against N x V = 1088)
  assert gathered and max(gathered) <= n * v < min(d * f, d * v // 2)
  step = hlo.collective_bytes(text)["per_trip"]["total"]
  assert 0 < step < sum(x.size * 4 for x in jax.tree.leaves(params)) / 4


def test_decode_step_never_copies_the_cache(periodic):
  """The compiled decode loop updates the cache in place: no copy of a layer's KV cache, or
  of the stack of them, per step (XLA inserted several before the writes were ordered after
  the reads, which made a long-prompt decode step 2.7x slower on CPU), and no copy of the
  delta-rule or conv state stacks (scanned over as inputs and outputs, they were copied
  whole; on TPU a second set of states, 4.5 GiB a chip for the 0.8B's rollouts)."""
  _, c, params, smp = periodic
  rows, prompt_slots, new_slots, samples = 2, 32, 32, 2
  n, slots = rows * samples, prompt_slots + new_slots
  cache = jax.eval_shape(lambda: qwen3_5.init_cache(c, n, slots, jnp.float32))
  decode = smp._decode_program(rows, prompt_slots, new_slots, samples, jnp.float32, 8, 0,
                               False, False)
  hlo = decode.lower(params, cache, jax.ShapeDtypeStruct((n, c.vocab_size), jnp.float32),
                     np.ones(n, bool), np.uint32(0), np.float32(1.0), np.float32(1.0),
                     np.int32(new_slots), np.full(8, -1, np.int32)).compile().as_text()
  layer_shapes = [",".join(map(str, x.shape[1:])) + "]"
                  for x in (cache.keys, cache.recurrent, cache.conv)]
  copies = [line for line in hlo.splitlines()
            if " copy(" in line and any(shape in line for shape in layer_shapes)]
  assert c.num_full_layers == 2 and c.num_linear_layers == 6 and not copies, copies


def test_cache_bytes_follow_the_documented_formula(periodic):
  _, c, _, smp = periodic
  rows, t, m = smp.shapes(3, 20, 100)
  assert (rows, t, m) == (4, 32, 128)
  n, s, item = rows * 2, t + m, 2  # two samples per prompt, bfloat16
  formula = (2 * c.num_full_layers * n * s * c.num_key_value_heads * c.head_dim * item
             + c.num_linear_layers * n * ((c.linear_conv_kernel_dim - 1) * c.linear_conv_dim
                                          * item + c.linear_num_value_heads
                                          * c.linear_key_head_dim * c.linear_value_head_dim * 4))
  # plus the per-row slot mask and positions, and the index
  assert smp.cache_bytes(3, 20, 100, num_samples=2) == formula + n * s + n * 4 + 4
  # On a (data 2, fsdp 1, tensor 2) mesh, one device holds half the rows and half the heads
  # (KV heads, delta-rule heads and conv channels all divide 2); the index is replicated.
  mesh = jax.sharding.AbstractMesh((2, 1, 2), sharding.MESH_AXES)
  per_device = sampler.Sampler(c, mesh=mesh).cache_bytes(3, 20, 100, num_samples=2)
  assert per_device == formula // 4 + (n * s + n * 4) // 2 + 4


@pytest.mark.parametrize("prompts,kwargs,message", [
    ([], {}, "prompts is empty"),
    ([[1, 2], []], {}, "prompt 1 is empty"),
    ([[1, 2], [3, 999]], {}, r"prompt 1 has token ids outside \[0, 131\): \[999\]"),
    ([[1]], dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
    ([[1]], dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    ([[1]], dict(temperature=-1.0), "temperature must be >= 0"),
    ([[1]], dict(seed=-1), r"seed must be in \[0, 2\*\*32\)"),
    ([[1] * 40], dict(buckets=(16, 32)), "prompt length 40 exceeds the largest bucket 32"),
])
def test_bad_requests_are_named(periodic, prompts, kwargs, message):
  _, config, params, _ = periodic
  kwargs = dict(kwargs)
  smp = sampler.Sampler(config, prompt_buckets=kwargs.pop("buckets", None))
  kwargs.setdefault("max_new_tokens", 4)
  with pytest.raises(ValueError, match=message):
    smp.generate(params, prompts, **kwargs)


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_threshold_keeps_the_nucleus(top_p):
  """The bisection keeps exactly the tokens that the sort-based definition keeps."""
  logits = np.random.RandomState(0).randn(16, 300).astype(np.float32) * 3
  probs = np.asarray(jax.nn.softmax(logits))
  tau = np.asarray(sampler.top_p_threshold(jnp.asarray(probs), top_p))
  for row, t in zip(probs, tau):
    order = np.argsort(-row)
    mass_before = np.cumsum(row[order]) - row[order]
    expected = set(order[mass_before < top_p].tolist())
    assert set(np.flatnonzero(row >= t).tolist()) == expected
