"""User messages in, graded texts out: the chat prompt, the sampler and the reward, shared by
training (rollouts of questions, BCQ and NCQ prompts, teacher responses) and evaluation."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from zppo_jax import multihost

from zppo_jax.rl import rewards
from zppo_jax.data.tokenizer import GENERATION_PREFIX, Tokenizer
from zppo_jax.sampler import LENGTH


def derive_seed(*parts: int) -> int:
  """A 32-bit seed from (run seed, step, stage, ...): every host draws the same."""
  return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def prompt_ids(tok: Tokenizer, config, users: Sequence[str]) -> list[list[int]]:
  """Token ids of each user message in the chat template (`config.rollout`: system prompt,
  thinking on or off), ending with the generation prompt."""
  return [tok.encode_prompt(user, config.rollout.system or None, config.rollout.enable_thinking)
          for user in users]


def sample(sampler, params, tokenizer, prompts, config, *, num_samples, seed, max_new_tokens,
           temperature, top_p, rows=0, prompt_slots=0):
  """(Completions, texts): `num_samples` completions of each prompt, prompt-major; each text
  is the response as graded, the generation prefix (e.g. "<think>\\n") included. `rows` and
  `prompt_slots`: the call's fixed shape (`Sampler.generate`)."""
  out = sampler.generate(params, prompts, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_p=top_p,
                         num_samples=num_samples, seed=seed,
                         stop_token_ids=tokenizer.stop_token_ids, rows=rows,
                         prompt_slots=prompt_slots)
  prefix = GENERATION_PREFIX[config.rollout.enable_thinking]
  texts = [prefix + t for t in tokenizer.decode_batch(
      [c[:-1] if r != LENGTH else c for c, r in zip(out.tokens, out.finish_reason)])]
  return out, texts


def grade(texts: Sequence[str], answers: Sequence[str], config) -> np.ndarray:
  """Rewards of (text, answer) pairs under `config.reward`, each graded by one host and
  gathered: the work is split, and a time-bounded check cannot come out differently on two
  hosts."""
  grader = rewards.Grader.from_config(config.reward)
  def mine(pairs):
    return grader.rewards([t for t, _ in pairs], [a for _, a in pairs]).tolist()
  return np.asarray(multihost.map_shared(mine, list(zip(texts, answers))), np.float32)
