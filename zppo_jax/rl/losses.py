"""Advantage estimators and the policy losses of the GRPO family and of distillation.

Every per-token array is [B, T] and aligned with the batch's `tokens`: entry t belongs to
token t (its log-prob given the tokens before it). `loss_mask` is 1 exactly on the tokens
that carry loss, the student's own completion tokens (or, for off-policy distillation, the
teacher response being imitated); prompt tokens, padding and teacher text inside BCQ/NCQ
prompts are 0.

A loss is `sum(weights * per_token_loss)`, with `weights` fixed in advance from the whole
batch's loss-token counts by the aggregation mode (`row_weights`). The loss is therefore a
plain sum over tokens, so accumulating gradients over chunks of the batch is exact, and a
masked token has weight 0 and gets exactly zero gradient.

Policy losses are chosen by name from `POLICY_LOSSES`; each is
`fn(scores, batch, cfg) -> (per_token_loss [B, T], metrics {name: [B, T]})`, where `scores`
holds the current policy's `logprobs` [B, T] (and `topk_logprobs` [B, T, K] when the batch
has teacher top-k ids), so a new variant is one function.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


# ----------------------------------------------------------------------------- advantages

def group_advantages(rewards, scale_std: bool = True, eps: float = 1e-6) -> np.ndarray:
  """rewards [num_groups, G] -> advantages [num_groups, G] float32: reward minus its group's
  mean, divided by the group's std when `scale_std` (GRPO; Dr. GRPO leaves it out). A group
  whose rewards are all equal gets exactly zero advantages, hence no gradient. Host-side
  (numpy): the number of groups changes every step, and a jitted op would compile for each."""
  rewards = np.asarray(rewards, np.float64)
  centred = rewards - rewards.mean(axis=1, keepdims=True)
  if scale_std:
    centred = centred / (rewards.std(axis=1, keepdims=True) + eps)
  return np.where(zero_variance_groups(rewards)[:, None], 0.0, centred).astype(np.float32)


def zero_variance_groups(rewards) -> np.ndarray:
  """rewards [num_groups, G] -> [num_groups] bool: groups with nothing to learn from (all
  rollouts right, or all wrong: the hard questions ZPPO's buffer exists for)."""
  rewards = np.asarray(rewards)
  return np.all(rewards == rewards[:, :1], axis=1)


def _group_estimator(rewards: Sequence[np.ndarray], cfg) -> list[np.ndarray]:
  """GRPO's: `group_advantages` of equal-size groups (`loss.scale_std`)."""
  return list(group_advantages(np.stack(rewards), cfg.scale_std))


def _no_estimator(rewards: Sequence[np.ndarray], cfg) -> list[np.ndarray]:
  """Zero: a loss that does not weigh rows by advantage (distillation)."""
  del cfg
  return [np.zeros(len(r), np.float32) for r in rewards]


# Advantage estimators by name (a method's `advantage`): each maps the groups' rewards
# [G_i] to advantages [G_i], `fn(rewards, cfg=config.train.loss)`.
ADVANTAGES: dict[str, Callable] = {"group": _group_estimator, "none": _no_estimator}


# ---------------------------------------------------------------------------- aggregation

AGGREGATIONS = ("token_mean", "sequence_mean", "constant")


def row_weights(counts, mode: str, max_tokens: int) -> np.ndarray:
  """[N] loss-token counts of the batch's rows -> [N] weight of each loss token of each row,
  so that the batch loss is a plain sum of weight * per-token loss, however the rows are cut
  into chunks. Host-side (numpy), from the whole batch.

  token_mean:    every loss token of the batch counts the same (DAPO);
  sequence_mean: mean over each sequence's tokens, then over sequences (original GRPO);
  constant:      divided by N * max_tokens whatever the lengths (Dr. GRPO), `max_tokens`
                 the generation budget.
  """
  counts = np.asarray(counts, np.float64)
  if mode == "token_mean":
    weights = np.full(counts.shape, 1.0 / max(counts.sum(), 1.0))
  elif mode == "sequence_mean":
    weights = 1.0 / np.maximum(counts, 1.0) / max(int((counts > 0).sum()), 1)
  elif mode == "constant":
    weights = np.full(counts.shape, 1.0 / (max(len(counts), 1) * max_tokens))
  else:
    raise ValueError(f"loss aggregation must be one of {AGGREGATIONS}, got {mode!r}")
  return weights.astype(np.float32)


def effective_mask(batch: dict, mask_truncated: bool) -> Array:
  """The loss mask, without the completions cut off by the length limit when
  `mask_truncated` (their missing ending would be graded as wrong)."""
  mask = batch["loss_mask"].astype(jnp.float32)
  if mask_truncated and "truncated" in batch:
    mask = mask * (1.0 - batch["truncated"].astype(jnp.float32))[:, None]
  return mask


# ------------------------------------------------------------------- per-token pieces

def kl_k3(logprobs: Array, ref_logprobs: Array) -> Array:
  """Per-token KL(pi || ref) estimate k3 = exp(ref - logp) - (ref - logp) - 1 >= 0."""
  delta = ref_logprobs - logprobs
  return jnp.exp(delta) - delta - 1.0


CORRECTIONS = ("none", "truncate", "mask")


def sampler_correction(train_logprobs: Array, sampler_logprobs: Array, mode: str,
                       cap: float) -> Array:
  """[B, T] weights for the mismatch between the sampler's log-probs and the train step's
  recomputed ones (different kernels and precision give slightly different numbers):
  "truncate" multiplies by min(pi_train / pi_sampler, cap) (truncated importance sampling),
  "mask" drops tokens whose ratio is outside [1 / cap, cap], "none" is 1."""
  if mode == "none":
    return jnp.ones_like(train_logprobs)
  ratio = jnp.exp(jax.lax.stop_gradient(train_logprobs - sampler_logprobs))
  if mode == "truncate":
    return jnp.minimum(ratio, cap)
  if mode == "mask":
    return ((ratio <= cap) & (ratio >= 1.0 / cap)).astype(jnp.float32)
  raise ValueError(f"sampler correction must be one of {CORRECTIONS}, got {mode!r}")


def clipped_surrogate(logprobs: Array, old_logprobs: Array, advantages: Array,
                      epsilon_low: float, epsilon_high: float, mask: Array):
  """PPO's clipped objective per token, as a loss: max(-A r, -A clip(r, 1-eps_low,
  1+eps_high)) with r = pi / pi_old. Masked tokens are zeroed before the exp, so padding
  with any old log-prob cannot overflow into the gradient. Returns (loss, ratio, clipped)."""
  log_ratio = jnp.where(mask > 0, logprobs - old_logprobs, 0.0)
  ratio = jnp.exp(log_ratio)
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
  loss = jnp.maximum(unclipped, clipped)
  return loss, ratio, (clipped > unclipped).astype(jnp.float32)


# --------------------------------------------------------------------------- the losses

def require(batch: dict, fields, why: str):
  """A clear error for a batch that lacks what the configured loss reads."""
  missing = [f for f in fields if f not in batch]
  if missing:
    raise ValueError(f"{why} needs batch field(s) {missing}; the batch has {sorted(batch)}")


LOGPROB_FIELDS = ("old_logprobs", "sampler_logprobs", "ref_logprobs", "teacher_logprobs")


def clean(batch: dict, logprobs: Array) -> dict:
  """The batch with every stored log-prob replaced by the current (stop-gradient) one on
  masked tokens, and teacher top-k log-probs by 0 there: padding may hold anything (-inf,
  1e30), and a `where` after the fact would still send NaN through the gradient."""
  mask = batch["loss_mask"] > 0
  current = jax.lax.stop_gradient(logprobs)
  out = {**batch, **{name: jnp.where(mask, batch[name], current)
                     for name in LOGPROB_FIELDS if name in batch}}
  if "teacher_topk_logprobs" in batch:
    out["teacher_topk_logprobs"] = jnp.where(mask[..., None], batch["teacher_topk_logprobs"], 0.0)
  return out


def _old_logprobs(logprobs: Array, batch: dict) -> Array:
  """The behaviour policy's log-probs: the batch's (recomputed before the first of several
  passes), or the current ones without gradient (one pass: ratio 1, the plain policy
  gradient)."""
  old = jax.lax.stop_gradient(logprobs)
  if "old_logprobs" not in batch:
    return old
  if "off_policy" in batch:  # teacher rows pretend to be on-policy: ratio 1 (see below)
    return jnp.where(batch["off_policy"][:, None], old, batch["old_logprobs"])
  return batch["old_logprobs"]


def _policy_gradient(logprobs, batch, cfg, advantages):
  """Clipped surrogate with per-token `advantages` [B, T], the sampler correction and the
  optional KL to a reference; shared by GRPO and on-policy distillation."""
  mask = batch["loss_mask"].astype(jnp.float32)
  batch = clean(batch, logprobs)
  old = _old_logprobs(logprobs, batch)
  loss, ratio, clipped = clipped_surrogate(logprobs, old, advantages, cfg.epsilon_low,
                                           cfg.epsilon_high, mask)
  metrics = {"ratio": ratio, "clip_fraction": clipped}
  if cfg.correction != "none" and "sampler_logprobs" in batch:
    weight = sampler_correction(old, batch["sampler_logprobs"], cfg.correction,
                                cfg.correction_cap)
    if "off_policy" in batch:  # the sampler never produced teacher rows
      weight = jnp.where(batch["off_policy"][:, None], 1.0, weight)
    loss = loss * weight
    metrics["sampler_weight"] = weight
  if cfg.beta:
    require(batch, ["ref_logprobs"], f"loss.beta = {cfg.beta}")
    kl = kl_k3(logprobs, batch["ref_logprobs"])
    loss = loss + cfg.beta * kl
    metrics["kl"] = kl
  return loss, metrics


def grpo(scores: dict, batch: dict, cfg):
  """GRPO / PPO clipped surrogate with sequence advantages `batch["advantages"]` [B].

  "GRPO + teacher response" (the paper's drift baseline) puts the teacher's correct
  response into the group, flagged by `batch["off_policy"]` [B]. Its rows are weighted as
  if the student had sampled them: ratio 1 (pi_old := pi, no clipping, no sampler
  correction), which is exactly the on-policy assumption the paper says it breaks. An
  importance weight pi / pi_teacher would instead need the teacher's log-probs and is
  unbounded where the student finds the teacher's tokens likely."""
  require(batch, ["advantages"], "loss 'grpo'")
  logprobs = scores["logprobs"]
  advantages = jnp.broadcast_to(batch["advantages"][:, None], logprobs.shape)
  return _policy_gradient(logprobs, batch, cfg, advantages)


def on_policy_distill(scores: dict, batch: dict, cfg):
  """Reverse KL to the teacher on the student's own samples: each sampled token gets the
  advantage -(log pi_student - log pi_teacher) (stop-gradient), whose policy gradient is
  the gradient of the per-token reverse KL, through the same clipped surrogate as GRPO.
  `batch["teacher_logprobs"]` [B, T] are the teacher's log-probs of the student's tokens."""
  require(batch, ["teacher_logprobs"], "loss 'on_policy_distill'")
  logprobs = scores["logprobs"]
  batch = clean(batch, logprobs)
  old = _old_logprobs(logprobs, batch)
  reverse_kl = old - batch["teacher_logprobs"]
  loss, metrics = _policy_gradient(logprobs, batch, cfg, -reverse_kl)
  return loss, {**metrics, "reverse_kl": reverse_kl}


def off_policy_distill(scores: dict, batch: dict, cfg):
  """Supervised imitation of teacher responses: next-token NLL, plus `cfg.forward_kl` times
  the forward KL to the teacher's distribution over its top-k tokens
  (`batch["teacher_topk_logprobs"]` [B, T, K] at ids `teacher_topk_ids`, whose student
  log-probs are `scores["topk_logprobs"]`)."""
  nll = -scores["logprobs"]
  metrics = {"nll": nll}
  if cfg.forward_kl:
    require({**batch, **scores}, ["topk_logprobs", "teacher_topk_logprobs"],
            f"loss.forward_kl = {cfg.forward_kl} (student top-k log-probs come from "
            f"batch field 'teacher_topk_ids')")
    teacher = clean(batch, scores["logprobs"])["teacher_topk_logprobs"]
    forward_kl = jnp.sum(jnp.exp(teacher) * (teacher - scores["topk_logprobs"]), axis=-1)
    nll = nll + cfg.forward_kl * forward_kl
    metrics["forward_kl"] = forward_kl
  return nll, metrics


POLICY_LOSSES: dict[str, Callable] = {
    "grpo": grpo,
    "on_policy_distill": on_policy_distill,
    "off_policy_distill": off_policy_distill,
}


def diagnostics(logprobs: Array, batch: dict) -> dict[str, Array]:
  """Per-token [B, T] figures that show a run going wrong, never part of the loss; from the
  current policy's `logprobs` (stop-gradient) and what the batch holds:
  logprob_mismatch: |log pi_train - log pi_sampler| on the tokens the student sampled (0 on
    rows flagged `off_policy`, which no sampler wrote; `sampled` [B, T] marks the others);
    kernels and precision make it nonzero, a bug in either makes it large.
  kl_to_start: the k3 estimate of KL(pi || pi_start) per token, when the batch carries the
    starting policy's log-probs (`ref_logprobs`).
  Masked tokens hold 0."""
  mask = batch["loss_mask"] > 0
  logprobs = jax.lax.stop_gradient(logprobs)
  out = {}
  if "sampler_logprobs" in batch:
    sampled = mask
    if "off_policy" in batch:
      sampled = sampled & ~batch["off_policy"][:, None]
    out["logprob_mismatch"] = jnp.where(sampled, jnp.abs(logprobs - batch["sampler_logprobs"]),
                                        0.0)
    out["sampled"] = sampled.astype(jnp.float32)
  if "ref_logprobs" in batch:
    out["kl_to_start"] = jnp.where(mask, kl_k3(logprobs, jnp.where(mask, batch["ref_logprobs"],
                                                                    logprobs)), 0.0)
  return out


def inert_rows(advantages, cfg) -> np.ndarray:
  """advantages [N] (host) -> [N] bool: rows whose per-token loss, and so gradient, is exactly
  zero under the loss `cfg`: GRPO rows with advantage 0 (a zero-variance group) when no KL
  term is added (beta 0). The train step leaves them out, which changes no update: their
  loss tokens still count in the aggregation's normalisation (`train_step.weigh_rows`). The
  other losses train on every row."""
  advantages = np.asarray(advantages, np.float32)
  if cfg.name == "grpo" and not cfg.beta:
    return advantages == 0.0
  return np.zeros(advantages.shape, bool)


def get_policy_loss(name: str) -> Callable:
  if name not in POLICY_LOSSES:
    raise ValueError(f"loss.name must be one of {sorted(POLICY_LOSSES)}, got {name!r}")
  return POLICY_LOSSES[name]
