"""The jitted policy-gradient step: `TrainStep(...)(state, chunks) -> (state, metrics)`.

The same programs run on one CPU device and a TPU pod slice: params, gradients and optimizer
state are placed by the logical-axis rules (`sharding.py`), the rows of each chunk are split
over the batch axes, and only the mesh changes. A step's batch comes as chunks of fixed rows
and few lengths (`batching.py`), so each gradient program compiles once per length; the
gradient buffer and the old state are donated, so a step updates them in place.

A chunk is a dict of arrays with a leading row dim R (see `losses.py` for the per-token
convention):
  tokens [R, T] int32, attention_mask [R, T], loss_mask [R, T], row_weights [R] (`weigh_rows`);
  and, by loss: advantages [R], old_logprobs / sampler_logprobs / ref_logprobs /
  teacher_logprobs [R, T], teacher_topk_ids / teacher_topk_logprobs [R, T, K],
  off_policy / truncated [R]; rows after image prompts: vision_tokens [R, M, D] (the frozen
  tower's tokens, the k-th for a row's k-th placeholder) or, when the tower trains, its inputs per row
  (tower_pixel_values [R, N, P], tower_frames, ...: `multimodal.tower_inputs`), vision_mask
  [R, T] (which tokens are the prompt's placeholders) and positions [R, T, 3] (multimodal
  rotary positions).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec

from zppo_jax import logprobs as logprobs_lib
from zppo_jax import models, sharding
from zppo_jax.rl import losses

SCHEDULES = ("constant", "cosine")


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


def state_shardings(model_config, optimizer, mesh, rules=None,
                    param_dtype=jnp.float32, tower: bool = False) -> TrainState:
  """NamedShardings of the whole state: params by their logical axes (with `tower`, the
  vision tower's too: it trains), optimizer moments like the params they belong to,
  counters and the key replicated."""
  model = models.of(model_config)
  param_sharding = model.param_shardings(model_config, mesh, rules)
  shapes = model.param_shapes(model_config, param_dtype)
  if tower:
    param_sharding["visual"] = model.vision_shardings(model_config, mesh, rules)
    shapes["visual"] = jax.eval_shape(
        lambda: model.vision_init(model_config, jax.random.key(0), param_dtype))
  replicated = NamedSharding(mesh, PartitionSpec())
  opt_sharding = optax.tree_map_params(
      optimizer, lambda _, s: s, jax.eval_shape(optimizer.init, shapes), param_sharding,
      transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, params=param_sharding, opt_state=opt_sharding,
                    rng=replicated)


def batch_sharding(mesh, rules=None) -> NamedSharding:
  """Leading (batch) dim over the `batch` rule's mesh axes; a prefix for every batch array."""
  axes = sharding.mesh_axes_of("batch", mesh, rules)
  return NamedSharding(mesh, PartitionSpec(axes or None))


def shard_batch(batch: dict, mesh, rules=None) -> dict:
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


TOWER_FIELDS = "tower_"   # a trained tower's inputs per row (`multimodal.tower_inputs`)


def score(params, batch, *, model_config, cfg, with_entropy: bool = True,
          batch_spec: NamedSharding | None = None):
  """The policy's scores of the batch's tokens (`logprobs.token_scores`) in compute dtype."""
  dtype = jnp.dtype(cfg.compute_dtype)
  # activations (and a Pallas kernel) keep their rows on the batch's mesh axes (under
  # explicit axes the body runs in auto mode, placed by the compiler: no constraint)
  placed = (batch_spec is not None and batch_spec.spec
            and not sharding.explicit_axes(batch_spec.mesh))
  layout = models.of(model_config).Layout(
      cfg.attention, *((batch_spec.mesh, batch_spec.spec[0]) if placed else (None, ())))

  def scores(params, tokens, attention_mask, topk_ids, vision_tokens, positions, vision_mask,
             tower_inputs):
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    return logprobs_lib.token_scores(
        model_config, params, tokens, attention_mask, chunk_size=cfg.logprob_chunk,
        topk_ids=topk_ids, with_entropy=with_entropy, delta_chunk_size=cfg.delta_chunk_size,
        remat=cfg.remat, vision_tokens=vision_tokens, positions=positions,
        vision_mask=vision_mask, tower_inputs=tower_inputs, layout=layout)

  # Rows after image prompts carry the frozen tower's tokens, or a trained tower's inputs
  # ("tower_*"), and their rotary positions.
  inputs = (batch["tokens"], batch["attention_mask"], batch.get("teacher_topk_ids"),
            batch.get("vision_tokens"), batch.get("positions"), batch.get("vision_mask"),
            {k: v for k, v in batch.items() if k.startswith(TOWER_FIELDS)} or None)
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
  in auto mode (rows stay split through the model)."""
  if sharding.explicit_axes(batch_spec.mesh):
    return jax.tree.map(lambda x: jax.sharding.reshard(x, batch_spec), tree)
  return jax.lax.with_sharding_constraint(tree, batch_spec)


def _loss(params, batch, *, model_config, cfg, batch_spec):
  """(sum of weighted per-token losses, metric sums) of one chunk."""
  mask = losses.effective_mask(batch, cfg.loss.mask_truncated)
  batch = {**batch, "loss_mask": mask}
  scores = score(params, batch, model_config=model_config, cfg=cfg, batch_spec=batch_spec)
  per_token, metrics = losses.get_policy_loss(cfg.loss.name)(scores, batch, cfg.loss)
  loss = jnp.sum(batch["row_weights"][:, None] * mask * per_token)
  sums = {name: jnp.sum(mask * jax.lax.stop_gradient(value))
          for name, value in {**metrics, "entropy": scores["entropy"],
                              "logprob": scores["logprobs"]}.items()}
  sums.update({name: jnp.sum(value) for name, value in
               losses.diagnostics(scores["logprobs"], batch).items()})
  return loss, {**sums, "loss": loss, "tokens": jnp.sum(mask)}


# Metric sums that are means over another count than the loss tokens: {metric: count}.
_MEAN_OVER = {"logprob_mismatch": "sampled"}


def accumulate(grads, params, chunk, *, model_config, cfg, batch_spec=None):
  """grads + the gradient of one chunk's weighted loss (float32, like the params), and the
  chunk's metric sums."""
  if batch_spec is not None:
    chunk = _split_rows(chunk, batch_spec)
  (_, sums), new = jax.value_and_grad(
      functools.partial(_loss, model_config=model_config, cfg=cfg, batch_spec=batch_spec),
      has_aux=True)(params, chunk)
  return jax.tree.map(lambda g, x: g + x.astype(g.dtype), grads, new), sums


def apply_gradients(state: TrainState, grads, *, optimizer, cfg):
  """The optimizer step on accumulated gradients: (new state, grad_norm, learning_rate)."""
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(grad_norm=optax.tree.norm(grads),
                 learning_rate=learning_rate_schedule(cfg.optimizer)(state.step))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def weigh_rows(chunks: Sequence[dict], loss_cfg, max_tokens: int = 0,
               left_out: Sequence[float] = ()) -> list[dict]:
  """The chunks with `row_weights` [R]: each loss token's weight in the step's loss, from
  the loss-token counts of every row of every chunk (`losses.row_weights`), so that the sum
  over chunks is the loss of the whole batch however it was cut. Host arrays in and out.
  `max_tokens` is the `constant` aggregation's budget when `loss.max_tokens` is 0.
  `left_out`: the loss-token counts of the batch's rows that no chunk holds because they
  have no gradient (`losses.inert_rows`); they count in the normalisation as if present."""
  if not chunks:
    return []
  counts = [np.asarray(c["loss_mask"], np.float32).sum(axis=1) for c in chunks]
  if loss_cfg.mask_truncated:
    counts = [n * ~np.asarray(c["truncated"], bool) for n, c in zip(counts, chunks)]
  real = [np.asarray(c["real"], bool) if "real" in c else np.ones(len(n), bool)
          for n, c in zip(counts, chunks)]
  weights = losses.row_weights(
      np.concatenate([np.concatenate(counts)[np.concatenate(real)],
                      np.asarray(left_out, np.float32)]),
      loss_cfg.aggregation, loss_cfg.max_tokens or max_tokens or
      max(np.asarray(c["tokens"]).shape[1] for c in chunks))
  out, start = [], 0
  for chunk, rows in zip(chunks, real):
    w = np.zeros(len(rows), np.float32)
    w[rows] = weights[start:start + rows.sum()]
    start += rows.sum()
    out.append({**{k: v for k, v in chunk.items() if k != "real"}, "row_weights": w})
  return out


def check_batch(batch: dict, mesh, rules=None):
  """Errors naming the field when a chunk cannot be split over the mesh."""
  rows = batch["tokens"].shape[0]
  for name, x in batch.items():
    if x.shape[0] != rows:
      raise ValueError(f"batch field {name!r} has {x.shape[0]} rows, tokens has {rows}")
  shards = sharding.shard_count("batch", mesh, rules)
  if rows % shards:
    raise ValueError(f"batch of {rows} rows does not split over the {shards} batch shards of "
                     f"the mesh {dict(mesh.shape)}")


def _gradient_shapes(state: TrainState):
  """The float32 gradient buffer's shapes, placed like the params."""
  return jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, jnp.float32, sharding=p.sharding),
                      state.params)


class TrainStep:
  """`step(state, chunks) -> (state, metrics)`: one optimizer step over a batch cut into
  chunks (dicts of arrays, rows split over the mesh's batch axes, `row_weights` from
  `weigh_rows`). Each chunk runs the gradient program compiled for its shape and adds into
  one float32 gradient buffer (donated, updated in place); then one update program applies
  the optimizer. Chunks of different lengths are how a batch avoids padding its short rows
  to its longest one.

  Metrics: loss, grad_norm, learning_rate, tokens, loss-token means of entropy, logprob,
  each loss's own metrics (ratio, clip_fraction, kl, sampler_weight, reverse_kl, nll,
  forward_kl) and kl_to_start, and logprob_mismatch over the sampled tokens
  (`losses.diagnostics`)."""

  def __init__(self, model_config, optimizer, cfg, mesh, shardings: TrainState,
               rules=None):
    spec = batch_sharding(mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    self._accumulate = jax.jit(
        functools.partial(accumulate, model_config=model_config, cfg=cfg, batch_spec=spec),
        in_shardings=(shardings.params, shardings.params, spec),
        out_shardings=(shardings.params, replicated), donate_argnums=(0,))
    self._apply = jax.jit(
        functools.partial(apply_gradients, optimizer=optimizer, cfg=cfg),
        in_shardings=(shardings, shardings.params), out_shardings=(shardings, replicated),
        donate_argnums=(0,))
    self._zeros = jax.jit(lambda params: jax.tree.map(
        lambda p: jnp.zeros_like(p, jnp.float32), params),
                          in_shardings=(shardings.params,), out_shardings=shardings.params)

  def lower(self, state: TrainState, chunk: dict | None = None) -> dict:
    """{"apply"} and, given a chunk's shapes ({name: ShapeDtypeStruct}), "accumulate": the
    update program and the gradient program for such a chunk, lowered for `state` (arrays
    or ShapeDtypeStructs) and not run."""
    grads = _gradient_shapes(state)
    out = {"apply": self._apply.lower(state, grads)}
    if chunk is not None:
      out["accumulate"] = self._accumulate.lower(grads, state.params, chunk)
    return out

  def precompile(self, state: TrainState, chunk_shapes: Sequence[dict]) -> None:
    """Compiles the gradient program for chunks of each of these shapes ({name:
    ShapeDtypeStruct}), and the update program, ahead of the first step."""
    for shapes in chunk_shapes:
      self._accumulate.lower(_gradient_shapes(state), state.params, shapes).compile()
    self._zeros.lower(state.params).compile()
    self.lower(state)["apply"].compile()

  def __call__(self, state: TrainState, chunks: Sequence[dict]):
    """No chunks is the update on a zero gradient (every row of the batch was inert,
    `losses.inert_rows`): the optimizer's moments still move as they would on the batch."""
    if any("row_weights" not in chunk for chunk in chunks):
      raise ValueError("a chunk has no row_weights: pass the chunks through "
                       "train_step.weigh_rows first")
    grads = self._zeros(state.params)
    sums = []
    for chunk in chunks:
      grads, chunk_sums = self._accumulate(grads, state.params, chunk)
      sums.append(chunk_sums)
    state, update = self._apply(state, grads)
    sums = jax.device_get(sums)
    total = {k: float(np.sum([s[k] for s in sums], dtype=np.float64))
             for k in (sums[0] if sums else ("loss", "tokens"))}
    tokens = max(total["tokens"], 1.0)
    metrics = {k: v / (max(total[_MEAN_OVER[k]], 1.0) if k in _MEAN_OVER else tokens)
               for k, v in total.items()
               if k not in ("loss", "tokens", *_MEAN_OVER.values())}
    metrics.update(loss=total["loss"], tokens=total["tokens"],
                   **{k: float(v) for k, v in jax.device_get(update).items()})
    return state, metrics


def jit_score(model_config, cfg, mesh, param_sharding, rules=None,
              with_entropy: bool = False):
  """`score` jitted for a sharded model: old, reference or teacher log-probs [B, T] of a
  batch (the teacher passes its own config and params on the same mesh)."""
  spec = batch_sharding(mesh, rules)
  fn = functools.partial(score, model_config=model_config, cfg=cfg, with_entropy=with_entropy,
                         batch_spec=spec)
  return jax.jit(fn, in_shardings=(param_sharding, spec), out_shardings=spec)
