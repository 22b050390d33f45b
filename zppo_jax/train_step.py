"""The jitted policy-gradient step: `train_step(state, batch) -> (state, metrics)`.

One program for one CPU device and a TPU pod slice: params, gradients and optimizer state
are placed by the logical-axis rules (`sharding.py`), the batch is split over the batch
axes, and only the mesh changes. The old state is donated, so a step updates params and
optimizer state in place.

A batch is a dict of arrays with a leading batch dim B (see `losses.py` for the per-token
convention):
  tokens [B, T] int32, attention_mask [B, T], loss_mask [B, T]; and, by loss:
  advantages [B], old_logprobs / sampler_logprobs / ref_logprobs / teacher_logprobs
  [B, T], teacher_topk_ids / teacher_topk_logprobs [B, T, K], off_policy / truncated [B].
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec

from zppo_jax import logprobs as logprobs_lib
from zppo_jax import losses, sharding
from zppo_jax.models import qwen3_5

SCHEDULES = ("constant", "cosine")


def default_config() -> ml_collections.ConfigDict:
  """Optimizer, loss and step settings; method configs override fields."""
  return ml_collections.ConfigDict(dict(
      optimizer=dict(
          learning_rate=1e-6, schedule="constant", warmup_steps=0, total_steps=1000,
          final_lr_fraction=0.1, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8,
          max_grad_norm=1.0),
      loss=dict(
          name="grpo", scale_std=True, epsilon_low=0.2, epsilon_high=0.28, beta=0.0,
          aggregation="token_mean", max_tokens=0, correction="truncate", correction_cap=2.0,
          mask_truncated=False, forward_kl=0.0),
      micro_batches=1,         # gradient accumulation: the batch is cut into this many
      logprob_chunk=256,       # sequence positions per chunk of the vocabulary projection
      delta_chunk_size=64,     # chunk of the Gated DeltaNet chunked rule
      remat="none",            # per layer block: none | full | dots
      param_dtype="float32",   # master params (and optimizer state)
      compute_dtype="bfloat16",
  ))


@struct.dataclass
class TrainState:
  step: jax.Array          # [] int32, optimizer steps taken
  params: Any
  opt_state: Any
  rng: jax.Array           # base key of the run; per-step keys are fold_in(rng, step)


def learning_rate_schedule(cfg) -> optax.Schedule:
  """Linear warmup to `learning_rate`, then constant or cosine decay to
  `final_lr_fraction * learning_rate` at `total_steps`."""
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f"optimizer.schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
  if cfg.schedule == "cosine":
    if cfg.total_steps <= cfg.warmup_steps:
      raise ValueError(f"optimizer.total_steps ({cfg.total_steps}) must exceed "
                       f"optimizer.warmup_steps ({cfg.warmup_steps}) for a cosine schedule")
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, cfg.warmup_steps, cfg.total_steps,
        cfg.learning_rate * cfg.final_lr_fraction)
  if not cfg.warmup_steps:
    return optax.constant_schedule(cfg.learning_rate)
  return optax.join_schedules([
      optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps),
      optax.constant_schedule(cfg.learning_rate)], [cfg.warmup_steps])


def make_optimizer(cfg) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW (float32 moments; no decay on norms and biases)."""
  return optax.chain(
      optax.clip_by_global_norm(cfg.max_grad_norm),
      optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                  weight_decay=cfg.weight_decay, mu_dtype=jnp.float32,
                  mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)))


def state_shardings(model_config, optimizer, mesh, rules=sharding.DEFAULT_RULES,
                    param_dtype=jnp.float32) -> TrainState:
  """NamedShardings of the whole state: params by their logical axes, optimizer moments like
  the params they belong to, counters and the key replicated."""
  param_sharding = qwen3_5.param_shardings(model_config, mesh, rules)
  shapes = qwen3_5.param_shapes(model_config, param_dtype)
  replicated = NamedSharding(mesh, PartitionSpec())
  opt_sharding = optax.tree_map_params(
      optimizer, lambda _, s: s, jax.eval_shape(optimizer.init, shapes), param_sharding,
      transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, params=param_sharding, opt_state=opt_sharding,
                    rng=replicated)


def batch_sharding(mesh, rules=sharding.DEFAULT_RULES) -> NamedSharding:
  """Leading (batch) dim over the `batch` rule's mesh axes; a prefix for every batch array."""
  axes = sharding.mesh_axes_of("batch", mesh, rules)
  return NamedSharding(mesh, PartitionSpec(axes or None))


def shard_batch(batch: dict, mesh, rules=sharding.DEFAULT_RULES) -> dict:
  """The global batch (numpy, the same on every host, as the trainer builds it) as arrays
  split over the batch shards: each device takes its block, no host sends rows to another."""
  spec = batch_sharding(mesh, rules)
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, spec, lambda index: x[index])
  return {name: put(x) for name, x in batch.items()}


def init_state(params, optimizer, seed: int, shardings: TrainState | None = None) -> TrainState:
  """A fresh state around `params`; with `shardings`, the optimizer state is created
  already sharded (never whole on one device)."""
  def build(params):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params),
                      rng=jax.random.key_data(jax.random.key(seed)))
  if shardings is None:
    return jax.jit(build)(params)
  return jax.jit(build, in_shardings=(shardings.params,), out_shardings=shardings)(params)


def score(params, batch, *, model_config, cfg, with_entropy: bool = True,
          batch_spec: NamedSharding | None = None):
  """The policy's scores of the batch's tokens (`logprobs.token_scores`) in compute dtype."""
  dtype = jnp.dtype(cfg.compute_dtype)

  def scores(params, tokens, attention_mask, topk_ids):
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    return logprobs_lib.token_scores(
        model_config, params, tokens, attention_mask, chunk_size=cfg.logprob_chunk,
        topk_ids=topk_ids, with_entropy=with_entropy, delta_chunk_size=cfg.delta_chunk_size,
        remat=cfg.remat)

  inputs = (batch["tokens"], batch["attention_mask"], batch.get("teacher_topk_ids"))
  if batch_spec is not None:
    inputs = _split_rows(inputs, batch_spec)
    if sharding.explicit_axes(batch_spec.mesh):
      # Under explicit axes the model body runs in auto mode (the compiler places its
      # activations); params, batch, scores and gradients keep their explicit types.
      scores = jax.sharding.auto_axes(scores, out_sharding=batch_spec)
  return scores(params, *inputs)


def _split_rows(tree, batch_spec: NamedSharding):
  """Batch arrays with their rows over the batch axes: a type in explicit mode (a jit
  argument passed as a host array arrives untyped even with in_shardings), a constraint
  in auto mode (rows of a micro-batch stay split)."""
  if sharding.explicit_axes(batch_spec.mesh):
    return jax.tree.map(lambda x: jax.sharding.reshard(x, batch_spec), tree)
  return jax.lax.with_sharding_constraint(tree, batch_spec)


def _loss(params, batch, weights, *, model_config, cfg, batch_spec):
  """(sum of weighted per-token losses, metric sums) of one micro-batch."""
  scores = score(params, batch, model_config=model_config, cfg=cfg, batch_spec=batch_spec)
  per_token, metrics = losses.get_policy_loss(cfg.loss.name)(scores, batch, cfg.loss)
  loss = jnp.sum(weights * per_token)
  mask = batch["loss_mask"]
  sums = {name: jnp.sum(mask * jax.lax.stop_gradient(value))
          for name, value in {**metrics, "entropy": scores["entropy"],
                              "logprob": scores["logprobs"]}.items()}
  return loss, {**sums, "loss": loss, "tokens": jnp.sum(mask)}


def _micro_batches(tree, k: int):
  """[B, ...] -> [k, B / k, ...], micro-batch j taking rows j, j + k, ...: each device's
  contiguous block of rows is spread over all k micro-batches, so every one stays split."""
  return jax.tree.map(
      lambda x: jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1), tree)


def train_step(state: TrainState, batch: dict, *, model_config, optimizer, cfg,
               batch_spec: NamedSharding | None = None):
  """One optimizer step on `batch`, accumulating gradients over `cfg.micro_batches`.

  Returns the new state and scalar metrics: loss, grad_norm, learning_rate, tokens, and
  loss-token means of entropy, logprob and each loss's own metrics (ratio, clip_fraction,
  kl, sampler_weight, reverse_kl, nll, forward_kl)."""
  if batch_spec is not None:
    batch = _split_rows(batch, batch_spec)
  mask = losses.effective_mask(batch, cfg.loss.mask_truncated)
  weights = losses.token_weights(mask, cfg.loss.aggregation, cfg.loss.max_tokens or None)
  batch = {**batch, "loss_mask": mask}
  grad_fn = jax.value_and_grad(
      functools.partial(_loss, model_config=model_config, cfg=cfg, batch_spec=batch_spec),
      has_aux=True)
  k = cfg.micro_batches
  if k == 1:
    (_, sums), grads = grad_fn(state.params, batch, weights)
  else:
    micro = _micro_batches((batch, weights), k)

    def accumulate(carry, micro):
      if batch_spec is not None:
        micro = _split_rows(micro, batch_spec)
      (_, sums), grads = grad_fn(state.params, *micro)
      return jax.tree.map(lambda c, x: c + x.astype(c.dtype), carry, (grads, sums)), None

    (_, sums), _ = jax.eval_shape(grad_fn, state.params, *jax.tree.map(lambda x: x[0], micro))
    # zeros_like keeps each param's sharding, which explicit mode needs in the scan carry
    zeros = (jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), state.params),
             jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), sums))
    (grads, sums), _ = jax.lax.scan(accumulate, zeros, micro)
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  tokens = jnp.maximum(sums["tokens"], 1.0)
  metrics = {name: value / tokens for name, value in sums.items()
             if name not in ("loss", "tokens")}
  metrics.update(loss=sums["loss"], tokens=sums["tokens"], grad_norm=optax.tree.norm(grads),
                 learning_rate=learning_rate_schedule(cfg.optimizer)(state.step))
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metrics


def check_batch(batch: dict, mesh, cfg, rules=sharding.DEFAULT_RULES):
  """Errors naming the field when the batch cannot be split as configured."""
  rows = batch["tokens"].shape[0]
  for name, x in batch.items():
    if x.shape[0] != rows:
      raise ValueError(f"batch field {name!r} has {x.shape[0]} rows, tokens has {rows}")
  shards = sharding.shard_count("batch", mesh, rules)
  if rows % (cfg.micro_batches * shards):
    raise ValueError(f"batch of {rows} rows does not split into micro_batches="
                     f"{cfg.micro_batches} times {shards} batch shards of the mesh "
                     f"{dict(mesh.shape)}")


def jit_train_step(model_config, optimizer, cfg, mesh, shardings: TrainState,
                   rules=sharding.DEFAULT_RULES):
  """`train_step` jitted with explicit in/out shardings and the old state donated."""
  spec = batch_sharding(mesh, rules)
  step = functools.partial(train_step, model_config=model_config, optimizer=optimizer, cfg=cfg,
                           batch_spec=spec)
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(step, in_shardings=(shardings, spec), out_shardings=(shardings, replicated),
                 donate_argnums=(0,))


def jit_score(model_config, cfg, mesh, param_sharding, rules=sharding.DEFAULT_RULES,
              with_entropy: bool = False):
  """`score` jitted for a sharded model: old, reference or teacher log-probs [B, T] of a
  batch (the teacher passes its own config and params on the same mesh)."""
  spec = batch_sharding(mesh, rules)
  fn = functools.partial(score, model_config=model_config, cfg=cfg, with_entropy=with_entropy,
                         batch_spec=spec)
  return jax.jit(fn, in_shardings=(param_sharding, spec), out_shardings=spec)
