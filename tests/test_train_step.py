"""The jitted train step: chunked log-probs, sharding equivalence, gradient accumulation over
chunks of any length, exact zeros, compiled memory."""

import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from zppo_jax import logprobs, run_config, sharding

from zppo_jax.rl import losses
from zppo_jax import train_step as ts
from zppo_jax.models import qwen3_5


def _model_config(**overrides):
  """A 2-layer Qwen3.5 (one Gated DeltaNet, one full attention layer): both layer kinds, and
  small enough to compile fast. Keys of 16 dims: with 8, some key is all-negative before the
  SiLU at this init, and the L2 norm's gradient at a near-zero key makes the step so sensitive
  that rounding the params to bfloat16 alone moves the grad norm by a third."""
  return qwen3_5.from_hf_dict({**dict(
      model_type="qwen3_5_text", vocab_size=128, hidden_size=64, intermediate_size=96,
      num_hidden_layers=2, layer_types=["linear_attention", "full_attention"],
      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
      linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=8,
      linear_num_key_heads=2, linear_num_value_heads=4, tie_word_embeddings=False),
      **overrides})


CONFIG = _model_config()
B, T = 8, 24


def _cfg(**overrides):
  cfg = run_config.train_config()
  cfg.logprob_chunk = 7  # does not divide T - 1: exercises the padded last chunk
  cfg.compute_dtype = "float32"
  # Adam's eps raised to 1e-2: its first step is otherwise lr * sign(g), which turns a
  # gradient element within rounding of 0 into a full +-lr difference between layouts.
  cfg.optimizer.update(learning_rate=1e-3, eps=1e-2)
  cfg.update(overrides)
  return cfg


def _batch(seed=0, **extra):
  """Prompts of 6-10 tokens then completions, right padding in some rows, one truncated."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, CONFIG.vocab_size, (B, T)).astype(np.int32)
  attention = np.ones((B, T), np.int32)
  loss_mask = np.zeros((B, T), np.float32)
  for row in range(B):
    prompt, end = 6 + row % 5, T - 3 * (row % 3)
    attention[row, end:] = 0
    loss_mask[row, prompt:end] = 1
  batch = dict(tokens=tokens, attention_mask=attention, loss_mask=loss_mask,
               advantages=rng.normal(size=B).astype(np.float32),
               sampler_logprobs=(-rng.uniform(1, 6, (B, T))).astype(np.float32),
               truncated=np.arange(B) == 3)
  return {**batch, **extra}


@functools.lru_cache(maxsize=None)
def _params():
  return qwen3_5.init_params(CONFIG, jax.random.key(0), jnp.float32, std=0.1)


@functools.lru_cache(maxsize=None)
def _compiled(mesh_shape, cfg_json, axis_types):
  """(mesh, optimizer, state shardings, jitted step), one per layout and config."""
  cfg = run_config.train_config()
  cfg.update(json.loads(cfg_json))
  mesh = sharding.make_mesh(mesh_shape, devices=jax.devices()[:int(np.prod(mesh_shape))],
                            axis_types=axis_types)
  optimizer = ts.make_optimizer(cfg.optimizer)
  shardings = ts.state_shardings(CONFIG, optimizer, mesh)
  return mesh, optimizer, shardings, ts.TrainStep(CONFIG, optimizer, cfg, mesh, shardings)


def _run(mesh_shape=(1, 1, 1), batch=None, axis_types="auto", chunks=None, left_out=(),
         **overrides):
  """One step from the initial params on a mesh of the first prod(mesh_shape) devices, on
  the batch as one chunk (or on `chunks`, with the loss-token counts of rows `left_out`):
  (new state, metrics)."""
  cfg = _cfg(**overrides)
  mesh, optimizer, shardings, step = _compiled(mesh_shape, cfg.to_json(), axis_types)
  state = ts.init_state(jax.device_put(_params(), shardings.params), optimizer, 0, shardings)
  chunks = [_batch() if batch is None else batch] if chunks is None else chunks
  for chunk in chunks:
    ts.check_batch(chunk, mesh)
  return step(state, ts.weigh_rows(chunks, cfg.loss, left_out=left_out))


def test_token_scores_match_full_logits():
  params, batch = _params(), _batch()
  topk = np.random.default_rng(1).integers(0, CONFIG.vocab_size, (B, T, 3)).astype(np.int32)
  got = logprobs.token_scores(CONFIG, params, batch["tokens"], batch["attention_mask"],
                              chunk_size=5, topk_ids=topk)
  full = jax.nn.log_softmax(qwen3_5.forward(CONFIG, params, batch["tokens"],
                                            batch["attention_mask"]).astype(jnp.float32))
  # position t scores token t from the logits at t - 1; position 0 is 0
  want = jnp.take_along_axis(full[:, :-1], batch["tokens"][:, 1:, None], -1)[..., 0]
  np.testing.assert_allclose(got["logprobs"][:, 1:], want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got["topk_logprobs"][:, 1:],
                             jnp.take_along_axis(full[:, :-1], topk[:, 1:], -1), atol=1e-5)
  np.testing.assert_allclose(got["entropy"][:, 1:],
                             -jnp.sum(jnp.exp(full) * full, -1)[:, :-1], rtol=1e-5)
  assert np.all(got["logprobs"][:, 0] == 0)


@pytest.fixture(scope="module")
def one_device():
  return _run((1, 1, 1))


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 4, 1), (1, 4, 2)])
def test_sharded_step_matches_one_device(mesh_shape, one_device):
  """Same loss, grad norm and updated params as one device (float32: rtol 1e-4, atol 1e-7),
  and params and Adam moments really are split as the rules say."""
  ref_state, ref = one_device
  state, metrics = _run(mesh_shape)
  for name in ("loss", "grad_norm", "ratio", "entropy", "sampler_weight"):
    np.testing.assert_allclose(metrics[name], ref[name], rtol=1e-4, err_msg=name)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               state.params, ref_state.params)
  data, fsdp, tensor = mesh_shape
  embed = state.params["embed"].sharding.spec  # [vocab, embed]
  assert embed == PartitionSpec("tensor", "fsdp")
  adam = state.opt_state[1][0]  # AdamW's moments: placed like the params they belong to
  for moment in (adam.mu, adam.nu):
    jax.tree.map(lambda m, p: m.sharding.is_equivalent_to(p.sharding, p.ndim) or pytest.fail(
        f"{m.sharding} != {p.sharding}"), moment, state.params)
  shard = state.params["embed"].addressable_shards[0].data.shape
  assert shard == (CONFIG.vocab_size // tensor, CONFIG.hidden_size // fsdp)


def test_explicit_sharding_mode_matches_one_device(one_device):
  """On a mesh with JAX's explicit axes the same step (here in 2 chunks) gives the
  one-device result, and the new params' types carry the rules' shardings."""
  ref_state, ref = one_device
  state, metrics = _run((2, 2, 2), axis_types="explicit",
                        chunks=_cut(_batch(), [range(4), range(4, 8)]))
  for name in ("loss", "grad_norm", "ratio", "entropy", "sampler_weight"):
    np.testing.assert_allclose(metrics[name], ref[name], rtol=1e-4, err_msg=name)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               state.params, ref_state.params)
  embed = jax.typeof(state.params["embed"]).sharding
  assert embed.mesh.axis_types == (jax.sharding.AxisType.Explicit,) * 3
  assert embed.spec == PartitionSpec("tensor", "fsdp")


def _cut(batch, rows, trim=False):
  """Chunks of the batch's rows (a list of row indices each); with `trim`, each chunk cut to
  its longest row (the padding that length-grouped chunks save)."""
  chunks = []
  for index in rows:
    chunk = {k: v[np.asarray(index)] for k, v in batch.items()}
    if trim:
      length = int(chunk["attention_mask"].sum(1).max())
      chunk = {k: v[:, :length] if v.ndim > 1 else v for k, v in chunk.items()}
    chunks.append(chunk)
  return chunks


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "constant"])
def test_chunks_of_any_length_equal_one_big_batch(aggregation):
  """The batch cut into chunks of 3, 3 and 2 rows, each cut to its own longest row (24, 21
  and 18 tokens), gives the step of the whole padded batch, for every aggregation (the
  weights come from all chunks); float32, rtol 1e-4."""
  cfg_loss = _cfg().loss
  cfg_loss.update(aggregation=aggregation, max_tokens=16)
  batch = _batch(seed=2)
  one_state, one = _run(batch=batch, loss=cfg_loss)
  chunks = _cut(batch, [[0, 3, 6], [1, 4, 7], [2, 5]], trim=True)
  assert [c["tokens"].shape[1] for c in chunks] == [24, 21, 18]
  acc_state, acc = _run(chunks=chunks, loss=cfg_loss)
  for name in ("loss", "grad_norm", "ratio", "entropy", "tokens"):
    np.testing.assert_allclose(acc[name], one[name], rtol=1e-4, err_msg=name)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               acc_state.params, one_state.params)


@pytest.mark.parametrize("aggregation,mask_truncated", [
    ("token_mean", False), ("sequence_mean", True), ("constant", False)])
def test_inert_rows_left_out_give_the_same_step(aggregation, mask_truncated):
  """The rows `losses.inert_rows` names (advantage 0 under GRPO with beta 0), left out of
  the chunks and counted through `left_out`, give the step of the whole batch: same loss,
  gradient norm and params, for every aggregation."""
  cfg_loss = _cfg().loss
  cfg_loss.update(aggregation=aggregation, max_tokens=16, mask_truncated=mask_truncated)
  advantages = np.array([1.0, 0.0, -0.5, 2.0, 0.0, -1.0, 0.0, 0.5], np.float32)
  batch = _batch(seed=3, advantages=advantages)
  one_state, one = _run(batch=batch, loss=cfg_loss)
  inert = losses.inert_rows(advantages, cfg_loss)
  assert inert.tolist() == (advantages == 0).tolist()
  mask = np.asarray(losses.effective_mask(batch, mask_truncated))
  chunks = _cut(batch, [np.flatnonzero(~inert)], trim=True)
  acc_state, acc = _run(chunks=chunks, left_out=mask[inert].sum(1), loss=cfg_loss)
  for name in ("loss", "grad_norm"):
    np.testing.assert_allclose(acc[name], one[name], rtol=1e-5, err_msg=name)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8),
               acc_state.params, one_state.params)
  # without their counts the normalisation changes and so does the step (token_mean and
  # sequence_mean divide by the batch, constant by its row count)
  _, wrong = _run(chunks=chunks, loss=cfg_loss)
  assert abs(float(wrong["loss"]) - float(one["loss"])) > 1e-3 * abs(float(one["loss"]))


def test_inert_rows_only_under_a_loss_without_other_terms():
  cfg_loss = _cfg().loss
  advantages = np.array([0.0, 1.0, 0.0])
  assert losses.inert_rows(advantages, cfg_loss).tolist() == [True, False, True]
  cfg_loss.beta = 0.04  # the KL to the reference has a gradient on every row
  assert not losses.inert_rows(advantages, cfg_loss).any()
  for name in ("on_policy_distill", "off_policy_distill"):
    cfg_loss.update(beta=0.0, name=name)
    assert not losses.inert_rows(advantages, cfg_loss).any()


def test_a_step_without_chunks_is_the_update_on_a_zero_gradient():
  """When every row is inert the step runs no gradient program, and the update equals the
  one on the batch of zero advantages: AdamW's moments from an earlier step still move the
  params."""
  cfg = _cfg()
  mesh, optimizer, shardings, step = _compiled((1, 1, 1), cfg.to_json(), "auto")
  fresh = lambda: ts.init_state(jax.device_put(_params(), shardings.params), optimizer, 0,
                                shardings)
  zero = ts.weigh_rows([_batch(advantages=np.zeros(B, np.float32))], cfg.loss)
  ends = []
  for second in (zero, []):
    state, _ = step(fresh(), ts.weigh_rows([_batch()], cfg.loss))
    state, metrics = step(state, second)
    ends.append(state)
  assert metrics["tokens"] == 0.0 and float(metrics["grad_norm"]) == 0.0
  assert int(ends[1].step) == 2
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               ends[0].params, ends[1].params)
  assert not np.array_equal(np.asarray(ends[1].params["embed"]), np.asarray(_params()["embed"]))


def test_zero_advantages_and_masked_tokens_leave_params_unchanged():
  """All-equal groups (advantages exactly 0) give exactly zero gradient, so AdamW leaves
  every parameter bit-identical; tokens outside the loss mask change nothing either."""
  batch = _batch(advantages=np.zeros(B, np.float32))
  state, metrics = _run(batch=batch)
  assert float(metrics["grad_norm"]) == 0.0
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               state.params, _params())
  # changing the tokens after the last loss token (padding) changes neither loss nor grads
  base, moved = _batch(), _batch()
  moved["tokens"] = np.where(moved["attention_mask"] == 0, 0, moved["tokens"])
  (_, m1), (_, m2) = _run(batch=base), _run(batch=moved)
  assert float(m1["loss"]) == float(m2["loss"]) and float(m1["grad_norm"]) == float(m2["grad_norm"])


def test_logprob_mismatch_is_a_mean_over_sampled_tokens():
  """Sampler log-probs 0.25 off the train step's on every sampled token, and far off on a
  teacher row (off_policy): the mismatch is 0.25, the teacher row counted in neither sum
  nor count; with the starting policy's log-probs equal to the current ones, no KL."""
  batch = _batch()
  current = np.asarray(logprobs.token_scores(CONFIG, _params(), batch["tokens"],
                                             batch["attention_mask"], chunk_size=7)["logprobs"])
  off = np.arange(B) == 2
  batch.update(sampler_logprobs=np.where(off[:, None], current - 5.0, current - 0.25),
               off_policy=off, ref_logprobs=current)
  _, metrics = _run(batch=batch)
  assert metrics["logprob_mismatch"] == pytest.approx(0.25, abs=1e-4)
  assert metrics["kl_to_start"] == pytest.approx(0.0, abs=1e-6)
  assert "sampled" not in metrics


def test_truncated_rows_are_masked_when_asked():
  cfg_loss = _cfg().loss
  cfg_loss.mask_truncated = True
  _, masked = _run(loss=cfg_loss)
  _, kept = _run()
  lengths = _batch()["loss_mask"].sum(1)
  assert float(kept["tokens"]) == lengths.sum()
  assert float(masked["tokens"]) == lengths.sum() - lengths[3]


def test_old_logprobs_from_score_give_ratio_one_then_move():
  """Several passes over one rollout batch: `jit_score` recomputes old log-probs that the
  step reproduces exactly (ratio 1, nothing clipped); after an update the ratio moves."""
  cfg = _cfg()
  mesh = sharding.make_mesh((2, 1, 1), devices=jax.devices()[:2])
  optimizer = ts.make_optimizer(cfg.optimizer)
  shardings = ts.state_shardings(CONFIG, optimizer, mesh)
  state = ts.init_state(jax.device_put(_params(), shardings.params), optimizer, 0, shardings)
  scorer = ts.jit_score(CONFIG, cfg, mesh, shardings.params)
  batch = ts.weigh_rows([_batch()], cfg.loss)[0]
  batch = ts.shard_batch(batch, mesh)  # global arrays, each device its block
  assert batch["tokens"].sharding.spec == PartitionSpec(("data", "fsdp"))
  batch["old_logprobs"] = scorer(state.params, batch)["logprobs"]
  step = ts.TrainStep(CONFIG, optimizer, cfg, mesh, shardings)
  state, first = step(state, [batch])
  state, second = step(state, [batch])
  np.testing.assert_allclose(first["ratio"], 1.0, atol=1e-6)
  assert float(first["clip_fraction"]) == 0.0
  assert abs(float(second["ratio"]) - 1.0) > 1e-4
  assert int(state.step) == 2


def test_logprob_memory_grows_with_chunk_not_vocab_times_length():
  """Compiled temp memory of the backward pass, over that of the model body alone: the
  chunked head adds O(B * chunk * vocab), far below one [B, T, vocab] float32 tensor, which
  a head on full logits adds more than once over."""
  config = _model_config(vocab_size=8192, hidden_size=32, intermediate_size=32,
                         num_attention_heads=2, num_key_value_heads=1, linear_num_key_heads=1,
                         linear_num_value_heads=2, tie_word_embeddings=True)
  batch, length = 2, 512
  params = jax.eval_shape(lambda: qwen3_5.init_params(config, jax.random.key(0)))
  tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)

  def temp(loss):
    compiled = jax.jit(jax.grad(loss)).lower(params, tokens).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  body = temp(lambda p, t: qwen3_5.hidden_states(config, p, t).sum())
  head = {chunk: temp(lambda p, t: logprobs.token_scores(config, p, t, chunk_size=chunk)
                      ["logprobs"].sum()) - body for chunk in (32, 128)}
  full = temp(lambda p, t: jax.nn.log_softmax(qwen3_5.forward(config, p, t)).sum()) - body
  logits_bytes = batch * length * config.vocab_size * 4
  assert head[32] < head[128] < logits_bytes / 2
  assert head[128] - head[32] < 8 * batch * (128 - 32) * config.vocab_size * 4
  assert full > logits_bytes


def test_learning_rate_schedules():
  cfg = _cfg().optimizer
  cfg.update(learning_rate=1.0, warmup_steps=10, total_steps=110, final_lr_fraction=0.1)
  constant = ts.learning_rate_schedule(cfg)
  assert [float(constant(s)) for s in (0, 5, 10, 500)] == [0.0, 0.5, 1.0, 1.0]
  cfg.schedule = "cosine"
  cosine = ts.learning_rate_schedule(cfg)
  np.testing.assert_allclose([cosine(5), cosine(10), cosine(60), cosine(110)],
                             [0.5, 1.0, 0.55, 0.1], rtol=1e-6)
  cfg.total_steps = 10
  with pytest.raises(ValueError, match="optimizer.total_steps"):
    ts.learning_rate_schedule(cfg)
  cfg.schedule = "linear"
  with pytest.raises(ValueError, match="optimizer.schedule must be one of"):
    ts.learning_rate_schedule(cfg)


def test_bad_batches_are_named():
  mesh = sharding.make_mesh((4, 1, 1), devices=jax.devices()[:4])
  with pytest.raises(ValueError, match=r"batch of 6 rows does not split over the 4 batch"):
    ts.check_batch(_cut(_batch(), [range(6)])[0], mesh)
  bad = _batch(advantages=np.zeros(5, np.float32))
  with pytest.raises(ValueError, match="batch field 'advantages' has 5 rows, tokens has 8"):
    ts.check_batch(bad, mesh)
  step = _compiled((1, 1, 1), _cfg().to_json(), "auto")[3]
  with pytest.raises(ValueError, match="no row_weights: pass the chunks through"):
    step(None, [_batch()])


def test_bfloat16_compute_tracks_float32():
  _, f32 = _run()
  state, bf16 = _run(compute_dtype="bfloat16")
  np.testing.assert_allclose(bf16["loss"], f32["loss"], rtol=0.05, atol=0.02)
  np.testing.assert_allclose(bf16["grad_norm"], f32["grad_norm"], rtol=0.1)
  # master params stay float32 and move
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
  assert float(optax.tree.norm(jax.tree.map(jnp.subtract, state.params, _params()))) > 0


def test_sharding_rules_come_from_the_config():
  """`config.mesh.rules` places the state: FSDP shards the embedding over the fsdp axis by
  default; a rule mapping `embed` to nothing replicates it. A rule naming an axis the mesh
  lacks is refused, naming the field."""
  c = run_config.base_config()
  c.mesh.shape = (1, -1, 1)
  optimizer = optax.sgd(1.0)
  mesh, rules = sharding.from_config(c.mesh)
  default = ts.state_shardings(CONFIG, optimizer, mesh, rules).params["embed"]
  assert default.spec == jax.sharding.PartitionSpec("tensor", "fsdp")  # vocab, embed
  c.mesh.rules = tuple((name, None if name == "embed" else target)
                       for name, target in c.mesh.rules)
  mesh, rules = sharding.from_config(c.mesh)
  replicated = ts.state_shardings(CONFIG, optimizer, mesh, rules).params["embed"]
  assert replicated.spec == jax.sharding.PartitionSpec("tensor", None)
  c.mesh.rules = (("embed", "fsdb"),)
  with pytest.raises(ValueError, match=r"config.mesh.rules: logical axis 'embed' maps to"):
    sharding.from_config(c.mesh)


@pytest.mark.parametrize("mesh_shape", [(1, 1, 1), (2, 4, 1)])
def test_splash_attention_steps_as_the_xla_path(mesh_shape, one_device):
  """`train.attention="splash_interpret"`: the Pallas TPU splash kernel for the full-attention
  layer, run in interpret mode on the CPU (on a mesh, per device on its rows): the same loss,
  grad norm and updated params as the XLA path."""
  ref_state, ref = one_device
  state, metrics = _run(mesh_shape, attention="splash_interpret")
  for name in ("loss", "grad_norm", "ratio", "entropy"):
    np.testing.assert_allclose(metrics[name], ref[name], rtol=1e-4, err_msg=name)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               state.params, ref_state.params)
  with pytest.raises(ValueError, match="config.train.attention='flash'"):
    _run(mesh_shape, attention="flash")


def test_the_loss_head_is_laid_out_once_not_gathered_per_chunk():
  """The output head is split over vocab across the rows' devices once a call, and each of
  the loss's chunks computes its logits where the slices lie: under FSDP's layout XLA
  gathered the head whole for every chunk (56 times a 14336-token row at 2B on a v5p-64,
  57 GB a chip a train chunk, and as much again to reduce-scatter its gradient). With a
  head far larger than a chunk's hidden states, as in Qwen3.5 (vocab 4096 here), the
  compiled step gathers no whole head (`test_sharded_step_matches_one_device` checks the
  numbers with the head so split)."""
  config = _model_config(vocab_size=4096)
  cfg = _cfg()
  mesh = sharding.make_mesh((1, 8, 1))
  optimizer = ts.make_optimizer(cfg.optimizer)
  shardings = ts.state_shardings(config, optimizer, mesh)
  step = ts.TrainStep(config, optimizer, cfg, mesh, shardings)
  params = qwen3_5.init_params(config, jax.random.key(0), jnp.float32, std=0.1)
  state = ts.init_state(jax.device_put(params, shardings.params), optimizer, 0, shardings)
  batch = ts.weigh_rows([_batch()], cfg.loss)[0]
  text = step.lower(state, batch)["accumulate"].compile().as_text()
  d, v = config.hidden_size, config.vocab_size
  gathered = re.findall(r"= \w+\[([\d,]+)\]\S* all-gather\(", text)
  assert gathered, "the FSDP-split weights are gathered"
  assert not [g for g in gathered if g in (f"{d},{v}", f"{v},{d}")], gathered
