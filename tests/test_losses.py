"""Advantages, aggregation and the policy losses on small hand-computed examples."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from zppo_jax.rl import losses


def _cfg(**overrides):
  return ml_collections.ConfigDict({**dict(
      name="grpo", epsilon_low=0.2, epsilon_high=0.28, beta=0.0, correction="none",
      correction_cap=2.0, forward_kl=0.0), **overrides})


def test_group_advantages_by_hand():
  rewards = jnp.array([[1.0, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
  np.testing.assert_allclose(losses.group_advantages(rewards, scale_std=False),
                             [[.5, -.5, -.5, .5], [0, 0, 0, 0], [-.25, -.25, -.25, .75]])
  std = np.sqrt(0.75 * 0.25)  # population std of [0, 0, 0, 1]
  np.testing.assert_allclose(losses.group_advantages(rewards),
                             [[1, -1, -1, 1], [0, 0, 0, 0],
                              [-.25 / std, -.25 / std, -.25 / std, .75 / std]], rtol=1e-5)
  assert losses.group_advantages(rewards)[1].tolist() == [0.0] * 4  # exactly, not ~eps
  assert losses.zero_variance_groups(rewards).tolist() == [False, True, False]
  assert losses.zero_variance_groups(jnp.zeros((2, 8))).tolist() == [True, True]


def test_row_weights_by_hand():
  counts = [2, 1]  # loss tokens of two rows
  np.testing.assert_allclose(losses.row_weights(counts, "token_mean", 0), [1 / 3, 1 / 3])
  np.testing.assert_allclose(losses.row_weights(counts, "sequence_mean", 0), [1 / 4, 1 / 2])
  np.testing.assert_allclose(losses.row_weights(counts, "constant", 4), [1 / 8, 1 / 8])
  # an empty row neither divides by zero nor counts as a sequence
  np.testing.assert_allclose(losses.row_weights([2, 0], "sequence_mean", 0), [.5, 1])
  # token weights (count x weight) sum to 1 for the means
  for mode in ("token_mean", "sequence_mean"):
    assert np.isclose(np.sum(np.array([3, 5, 1]) * losses.row_weights([3, 5, 1], mode, 0)), 1)
  with pytest.raises(ValueError, match="aggregation must be one of"):
    losses.row_weights(counts, "sum", 0)


def test_clipped_surrogate_by_hand():
  """r = 1.5 and 0.5 with A = +1 and -1, eps_low 0.2, eps_high 0.28."""
  old = jnp.zeros(4)
  logp = jnp.log(jnp.array([1.5, 0.5, 0.5, 1.5]))
  adv = jnp.array([1.0, 1.0, -1.0, -1.0])
  loss, ratio, clipped = losses.clipped_surrogate(logp, old, adv, 0.2, 0.28, jnp.ones(4))
  np.testing.assert_allclose(ratio, [1.5, .5, .5, 1.5], rtol=1e-6)
  # A>0: min(r A, clip(r) A) -> -1.28 (clipped at 1 + eps_high), -0.5 (not clipped)
  # A<0: -> 0.8 (clipped at 1 - eps_low), 1.5 (not clipped)
  np.testing.assert_allclose(loss, [-1.28, -.5, .8, 1.5], rtol=1e-6)
  assert clipped.tolist() == [1, 0, 1, 0]
  grad = jax.grad(lambda lp: losses.clipped_surrogate(lp, old, adv, .2, .28, jnp.ones(4))[0].sum()
                  )(logp)
  # clipped tokens get no gradient; the others d(-A r)/dlogp = -A r
  np.testing.assert_allclose(grad, [0, -.5, 0, 1.5], rtol=1e-6)


def test_masked_tokens_get_exactly_zero_gradient_even_with_garbage():
  """Padding may hold any old/sampler log-prob (here +-1e30): zero weight, zero gradient,
  and nothing overflows into NaN."""
  mask = jnp.array([[1.0, 1, 0, 0]])
  logp = jnp.array([[-1.0, -2.0, -3.0, -4.0]])
  batch = {"loss_mask": mask, "advantages": jnp.array([0.7]),
           "old_logprobs": jnp.array([[-1.1, -1.9, -1e30, 1e30]]),
           "sampler_logprobs": jnp.array([[-1.0, -2.0, 1e30, -1e30]]),
           "ref_logprobs": jnp.array([[-1.0, -2.5, 1e30, -1e30]]),
           "teacher_logprobs": jnp.array([[-1.0, -2.5, -jnp.inf, 1e30]]),
           "teacher_topk_logprobs": jnp.array([[[-.1, -3], [-.2, -2], [-jnp.inf, 0], [1e30, 0]]])}
  cfg = _cfg(beta=0.1, correction="truncate", forward_kl=0.5)
  weights = mask * losses.row_weights(mask.sum(1), "token_mean", 0)[:, None]

  for name, loss in losses.POLICY_LOSSES.items():
    def total(lp):
      scores = {"logprobs": lp, "topk_logprobs": jnp.stack([lp, lp - 1], -1)}
      return jnp.sum(weights * loss(scores, batch, cfg)[0])

    value, grad = jax.value_and_grad(total)(logp)
    assert np.isfinite(value), name
    assert grad[0, 2] == 0.0 and grad[0, 3] == 0.0, name
    assert np.all(grad[0, :2] != 0.0), name


def test_zero_variance_group_gives_exactly_zero_gradient():
  rewards = jnp.array([[0.0, 0, 0, 0], [1, 0, 1, 0]])
  adv = losses.group_advantages(rewards).reshape(-1)
  batch = {"loss_mask": jnp.ones((8, 3)), "advantages": adv,
           "old_logprobs": jnp.full((8, 3), -1.1)}  # ratio 1.1: inside the clip range
  logp = jnp.full((8, 3), -1.0)
  weights = batch["loss_mask"] * losses.row_weights([3] * 8, "token_mean", 0)[:, None]
  grad = jax.grad(lambda lp: jnp.sum(weights * losses.grpo({"logprobs": lp}, batch, _cfg())[0])
                  )(logp)
  assert np.all(grad[:4] == 0.0)
  assert np.all(grad[4:] != 0.0)


def test_kl_k3_and_sampler_correction():
  logp = jnp.array([-1.0, -1.0, -1.0])
  ref = jnp.array([-1.0, -1.0 + np.log(2), -1.0 - np.log(2)])
  np.testing.assert_allclose(losses.kl_k3(logp, ref), [0, 2 - np.log(2) - 1, .5 + np.log(2) - 1],
                             rtol=1e-6)
  train = jnp.log(jnp.array([0.5, 0.5, 0.5]))
  sampler = jnp.log(jnp.array([0.5, 0.1, 0.9]))  # ratios 1, 5, 0.556
  np.testing.assert_allclose(losses.sampler_correction(train, sampler, "truncate", 2.0),
                             [1, 2, 5 / 9], rtol=1e-5)
  np.testing.assert_allclose(losses.sampler_correction(train, sampler, "mask", 2.0), [1, 0, 1])
  np.testing.assert_allclose(losses.sampler_correction(train, sampler, "none", 2.0), [1, 1, 1])


def test_truncated_completions_are_masked_when_asked():
  batch = {"loss_mask": jnp.ones((2, 3)), "truncated": jnp.array([False, True])}
  assert losses.effective_mask(batch, True).tolist() == [[1, 1, 1], [0, 0, 0]]
  assert losses.effective_mask(batch, False).tolist() == [[1, 1, 1], [1, 1, 1]]


def test_teacher_rows_are_weighted_as_on_policy():
  """GRPO + teacher response: a flagged row has ratio 1 (no clipping, no sampler weight)
  whatever its stored old log-probs, so its gradient is the plain -A d logp."""
  logp = jnp.array([[-0.5, -0.5], [-0.5, -0.5]])
  batch = {"loss_mask": jnp.ones((2, 2)), "advantages": jnp.array([1.0, 1.0]),
           "old_logprobs": jnp.full((2, 2), -3.0), "sampler_logprobs": jnp.full((2, 2), -3.0),
           "off_policy": jnp.array([False, True])}
  cfg = _cfg(correction="truncate")
  per_token, metrics = losses.grpo({"logprobs": logp}, batch, cfg)
  np.testing.assert_allclose(metrics["ratio"][1], [1, 1])
  np.testing.assert_allclose(per_token[1], [-1, -1])
  assert metrics["clip_fraction"][0].tolist() == [1, 1]  # r = e^2.5, clipped at 1.28
  grad = jax.grad(lambda lp: losses.grpo({"logprobs": lp}, batch, cfg)[0].sum())(logp)
  np.testing.assert_allclose(grad, [[0, 0], [-1, -1]])


def test_on_policy_distill_pushes_toward_the_teacher():
  """Advantage -(log pi - log pi_teacher): tokens the teacher likes more go up."""
  logp = jnp.log(jnp.array([[0.2, 0.5, 0.4]]))
  teacher = jnp.log(jnp.array([[0.4, 0.5, 0.1]]))
  batch = {"loss_mask": jnp.ones((1, 3)), "teacher_logprobs": teacher}
  per_token, metrics = losses.on_policy_distill({"logprobs": logp}, batch, _cfg())
  np.testing.assert_allclose(metrics["reverse_kl"], [[np.log(.5), 0, np.log(4)]], rtol=1e-6)
  grad = jax.grad(lambda lp: losses.on_policy_distill({"logprobs": lp}, batch, _cfg())[0].sum()
                  )(logp)
  # d/dlogp of -A r at r = 1 is -A = reverse_kl
  np.testing.assert_allclose(grad, [[np.log(.5), 0, np.log(4)]], rtol=1e-6)


def test_off_policy_distill_nll_and_top_k_forward_kl():
  logp = jnp.log(jnp.array([[0.5, 0.25]]))
  teacher_topk = jnp.log(jnp.array([[[0.6, 0.4], [0.9, 0.1]]]))
  student_topk = jnp.log(jnp.array([[[0.5, 0.3], [0.25, 0.5]]]))
  batch = {"loss_mask": jnp.ones((1, 2)), "teacher_topk_logprobs": teacher_topk}
  scores = {"logprobs": logp, "topk_logprobs": student_topk}
  per_token, metrics = losses.off_policy_distill(scores, batch, _cfg(forward_kl=0.5))
  kl = [.6 * np.log(.6 / .5) + .4 * np.log(.4 / .3), .9 * np.log(.9 / .25) + .1 * np.log(.1 / .5)]
  np.testing.assert_allclose(metrics["forward_kl"], [kl], rtol=1e-6)
  np.testing.assert_allclose(per_token, [[np.log(2) + .5 * kl[0], np.log(4) + .5 * kl[1]]],
                             rtol=1e-6)


def test_losses_are_chosen_by_name_and_name_missing_fields():
  assert losses.get_policy_loss("grpo") is losses.grpo
  with pytest.raises(ValueError, match="loss.name must be one of"):
    losses.get_policy_loss("ppo2")
  scores, batch = {"logprobs": jnp.zeros((1, 2))}, {"loss_mask": jnp.ones((1, 2))}
  with pytest.raises(ValueError, match=r"loss 'on_policy_distill' needs batch field\(s\) "
                                       r"\['teacher_logprobs'\]"):
    losses.on_policy_distill(scores, batch, _cfg())
  with pytest.raises(ValueError, match=r"loss.beta = 0.1 needs batch field\(s\) "
                                       r"\['ref_logprobs'\]"):
    losses.grpo(scores, {**batch, "advantages": jnp.ones(1)}, _cfg(beta=0.1))
  with pytest.raises(ValueError, match=r"loss.forward_kl = 0.5 .*'teacher_topk_ids'"):
    losses.off_policy_distill(scores, batch, _cfg(forward_kl=0.5))


def test_diagnostics_by_hand():
  """Mismatch on the sampled tokens only (not a teacher row's, not masked padding holding
  anything), KL to the start as k3, masked tokens 0."""
  logprobs = jnp.array([[-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0]])
  batch = dict(loss_mask=jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]),
               sampler_logprobs=jnp.array([[-1.5, -2.0, jnp.nan], [0.0, 0.0, 0.0]]),
               off_policy=jnp.array([False, True]),
               ref_logprobs=jnp.array([[-1.0, -1.0, jnp.inf], [-2.0, -1.0, -1.0]]))
  out = losses.diagnostics(logprobs, batch)
  np.testing.assert_allclose(out["logprob_mismatch"], [[0.5, 0, 0], [0, 0, 0]])
  np.testing.assert_array_equal(out["sampled"], [[1, 1, 0], [0, 0, 0]])
  k3 = lambda d: np.exp(d) - d - 1  # noqa: E731  (d = ref - logp)
  np.testing.assert_allclose(out["kl_to_start"], [[0, k3(1.0), 0], [k3(-1.0), 0, 0]], rtol=1e-6)
  assert set(losses.diagnostics(logprobs, {"loss_mask": batch["loss_mask"]})) == set()
