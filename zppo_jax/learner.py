"""The student's train state and the compiled programs that use it: the sampling copy, the
scores of the other policies a loss needs, and the update over a step's groups (Tunix's
learner). The RL step (`rl/step.py`) hands it groups; it knows nothing of how they were made.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zppo_jax import models, sharding
from zppo_jax import train_step as ts
from zppo_jax.policies import Policies
from zppo_jax.rl import batching, losses, stages
from zppo_jax.rl.methods import LOGPROBS, Method
from zppo_jax.rl.rollouts import Group
from zppo_jax.sampler import padded_size


class Learner:
  """`state` (params and optimizer state on the mesh) and its programs, from the run config's
  `train`, `student.dtype`, `num_iterations` and `seed`. A vision-language student's frozen
  tower (`tower`, params["visual"] of the checkpoint) stays out of the state: it has no
  optimizer moments, and the train step takes its tokens as inputs (`vision_fields`). A
  tower that trains (`config.vision.train_tower`) comes in `params["visual"]`: it is in the
  state, and the train step runs it on each row's images."""

  def __init__(self, config, method: Method, mesh, rules, policies: Policies, params,
               tower=None):
    self.config, self.method, self.policies = config, method, policies
    self.mesh, self.rules = mesh, rules  # arrays are placed by the logical-axis rules
    train_cfg, model_config = config.train, policies.config
    self.optimizer = ts.make_optimizer(train_cfg.optimizer)
    self.train_tower = "visual" in params
    if self.train_tower and tower is not None:
      raise ValueError("the vision tower is either trained (in params) or frozen (tower)")
    self.shardings = ts.state_shardings(model_config, self.optimizer, mesh, rules,
                                        param_dtype=jnp.dtype(config.student.dtype),
                                        tower=self.train_tower)
    self.state = ts.init_state(params, self.optimizer, config.seed, self.shardings)
    self.step_fn = ts.TrainStep(model_config, self.optimizer, train_cfg, mesh, self.shardings,
                                rules)
    self.score_fn = ts.jit_score(model_config, train_cfg, mesh, self.shardings.params, rules)
    # Rollouts sample in the compute dtype (bfloat16 at scale), as the train step scores:
    # one cast per step, not float32 master weights in every decode step, laid out as the
    # sampler takes its params (`sampler.decode_rules`; a trained tower keeps its own).
    compute = jnp.dtype(train_cfg.compute_dtype)
    layout = policies.sampler.param_shardings
    if layout is not None and self.train_tower:
      layout = {**layout, "visual": self.shardings.params["visual"]}
    self._cast = jax.jit(lambda params: jax.tree.map(lambda p: p.astype(compute), params),
                         out_shardings=layout)
    self.tower = tower
    self._sampling_tower = None if tower is None else jax.tree.map(
        lambda p: p.astype(compute), tower)
    # The teacher scores rows after image prompts with its own tower's tokens (its text
    # params alone go to its scorer).
    self._teacher_text = None if policies.teacher_params is None else {
        k: v for k, v in policies.teacher_params.items() if k != "visual"}
    if method.teacher == LOGPROBS:
      teacher = policies.teacher_config
      self.teacher_score_fn = ts.jit_score(
          teacher, train_cfg, mesh, models.of(teacher).param_shardings(teacher, mesh, rules),
          rules)
    shards = sharding.shard_count("batch", mesh, rules)
    if train_cfg.chunk_rows < 1 or train_cfg.chunk_rows % shards:
      raise ValueError(f"config.train.chunk_rows={train_cfg.chunk_rows} must be a positive "
                       f"multiple of the mesh's {shards} batch shards")
    self.length_buckets = batching.length_buckets(model_config.max_position_embeddings,
                                                  train_cfg.length_bucket)

  def sampling_params(self):
    """The current params in the compute dtype (with the tower), for the sampler."""
    params = self._cast(self.state.params)
    return params if self.tower is None else {**params, "visual": self._sampling_tower}

  def vision_fields(self, tokens, attention_mask, prompt_lengths, visions) -> dict:
    """A chunk's `vision_tokens` [R, M, D] (the frozen tower's tokens, the k-th for a row's
    k-th placeholder, encoded once per prompt: a group's rows share it; M: room for
    `config.vision.max_tokens`, one shape for every chunk), `vision_mask` [R, T] (the
    prompts' placeholders; a placeholder id sampled in a completion stays text, as it was
    when sampled) and `positions` [R, T, 3] (multimodal rotary positions), for
    `batching.make_chunks`; for a method scored by the teacher, its own tower's tokens too
    (`TEACHER_VISION`, read by its scorer alone)."""
    model, config = models.of(self.policies.config), self.policies.config
    in_prompt = np.arange(tokens.shape[1])[None, :] < np.asarray(prompt_lengths)[:, None]
    placeholder = np.isin(tokens, (config.image_token_id, config.video_token_id))
    ids = np.where(placeholder & ~in_prompt, -1, tokens)   # -1: read as text
    grids = [tuple(g) for v in visions if v is not None for g in v[1]]
    by_kind = model.multimodal_inputs(config, ids, None, grids)   # images and video frames
    positions = model.multimodal_positions(config, ids, attention_mask,
                                           by_kind["image_grid_thw"], by_kind["video_grid_thw"])
    vision_mask = placeholder & in_prompt
    out = {"vision_mask": vision_mask,
           "positions": np.ascontiguousarray(np.moveaxis(positions, 0, -1))}
    need, room = int(vision_mask.sum(1).max(initial=0)), self.config.vision.max_tokens
    slots = max(room, 1) if need <= room else padded_size(need, 16)   # more: another shape
    if self.method.teacher == LOGPROBS:   # the teacher's scorer reads its own tower's tokens
      teacher = self.policies.teacher_params
      out[TEACHER_VISION] = _frozen_tokens(self.policies.teacher_config, {
          "embed": teacher["embed"], "visual": teacher["visual"]}, ids, visions, slots)
    if self.train_tower:  # the tower runs in the train step, on every row's images
      return {**out, **model.multimodal_tower_inputs(config, visions)}
    params = {"embed": self.state.params["embed"], "visual": self.tower}
    return {**out, "vision_tokens": _frozen_tokens(config, params, ids, visions, slots)}

  def _scorers(self) -> list[tuple[str, object, dict]]:
    """(field, jitted score program, params) of each other policy's log-probs the loss
    needs: the teacher's, the frozen reference's, the policy's own before the update."""
    def program(whose):  # the teacher's scorer exists only for a method that needs it
      if whose == TEACHER:
        return self.teacher_score_fn, self._teacher_text
      return self.score_fn, (self.policies.ref_params if whose == REFERENCE
                             else self.state.params)
    return [(field, *program(whose)) for field, whose in scored_fields(self.config, self.method)]

  def _scored(self, chunk: dict) -> dict:
    """A chunk with the log-probs of the other policies its loss needs, computed on the
    devices and sharded like the chunk."""
    out = _step_fields(chunk)
    for name, fn, params in self._scorers():
      out[name] = fn(params, _scorer_fields(name, chunk))["logprobs"]
    return out

  def _scored_shapes(self, chunk: dict) -> dict:
    """The fields `_scored` adds to such a chunk, after compiling the programs that score it."""
    for name, fn, params in self._scorers():
      fn.lower(params, _scorer_fields(name, chunk)).compile()
    return score_shapes([name for name, _, _ in self._scorers()], chunk)

  def precompile(self, longest_row: int):
    """The update's and the scorers' programs for every chunk length up to `longest_row`."""
    train_cfg = self.config.train
    spec = ts.batch_sharding(self.mesh, self.rules)
    longest = min(longest_row, self.length_buckets[-1])
    chunks = []
    for length in self.length_buckets[:self.length_buckets.index(
        batching.bucket_of(longest, self.length_buckets)) + 1]:
      chunk = chunk_shapes(train_cfg, length, spec, self._vision_fields())
      chunks.append({**_step_fields(chunk), **self._scored_shapes(chunk)})
    self.step_fn.precompile(self.state, chunks)

  def _vision_fields(self):
    return self.vision_fields if self.tower is not None or self.train_tower else None

  # -- the update ----------------------------------------------------------------------------

  def update(self, groups: Sequence[Group]) -> dict:
    """The train step(s) on the groups (`num_iterations` passes); `train/*` metrics."""
    config, loss_cfg = self.config, self.config.train.loss
    if not groups:
      return {"update/skipped": 1.0}
    advantages = losses.ADVANTAGES[self.method.advantage]([g.rewards for g in groups], loss_cfg)
    rows = stages.train_rows(groups, advantages)
    # Rows without gradient (a zero-variance group under GRPO) only count in the loss's
    # normalisation: no program runs on them.
    inert = losses.inert_rows([r.advantage for r in rows], loss_cfg)
    trained = [r for r, skip in zip(rows, inert) if not skip]
    chunks = ts.weigh_rows(
        batching.make_chunks(trained, chunk_rows=config.train.chunk_rows,
                             buckets=self.length_buckets,
                             pad_id=self.policies.tokenizer.endoftext_id,
                             vision_fields=self._vision_fields()),
        loss_cfg, config.rollout.max_new_tokens,
        left_out=[r.loss_tokens(loss_cfg.mask_truncated)
                  for r, skip in zip(rows, inert) if skip])
    chunks = [self._scored(ts.shard_batch(chunk, self.mesh, self.rules)) for chunk in chunks]
    for n in range(config.num_iterations):
      self.state, metrics = self.step_fn(self.state, chunks)
      if n == 0:  # the sampled tokens scored by the params that sampled them
        mismatch = metrics.get("logprob_mismatch")
    if mismatch is not None:
      metrics["logprob_mismatch"] = mismatch
    out = {f"train/{k}": v for k, v in metrics.items()}
    positions = sum(chunk["tokens"].size for chunk in chunks)
    out.update({"train/rows": float(len(rows)), "train/trained_rows": float(len(trained)),
                "train/chunks": float(len(chunks)),
                "train/tokens": float(sum(r.loss_tokens(loss_cfg.mask_truncated)
                                          for r in rows)),
                "train/trained_tokens": metrics["tokens"],
                "train/padding": 1.0 - sum(len(r) for r in trained) / max(positions, 1)})
    return out


TEACHER_VISION = "teacher_vision_tokens"   # a chunk's field for the teacher's scorer alone
TEACHER, REFERENCE, BEFORE_UPDATE = "teacher", "reference", "before_update"  # whose scores


def scored_fields(config, method: Method) -> list[tuple[str, str]]:
  """(chunk field, whose params) of the other policies' log-probs the run's loss needs: the
  teacher's, the frozen starting student's (`train.loss.beta`, `log.kl_to_start`), the
  policy's own before the update (`num_iterations` > 1)."""
  return ([("teacher_logprobs", TEACHER)] if method.teacher == LOGPROBS else []) + (
      [("ref_logprobs", REFERENCE)] if config.train.loss.beta or config.log.kl_to_start
      else []) + ([("old_logprobs", BEFORE_UPDATE)] if config.num_iterations > 1 else [])


def score_shapes(fields, chunk: dict) -> dict:
  """{field: ShapeDtypeStruct}: the [R, T] float32 log-probs each scorer adds to `chunk`."""
  tokens = chunk["tokens"]
  return {f: jax.ShapeDtypeStruct(tokens.shape, jnp.float32, sharding=tokens.sharding)
          for f in fields}


def chunk_shapes(train_cfg, length: int, spec, vision_fields=None) -> dict:
  """{field: ShapeDtypeStruct} of a chunk of `length`-token rows as the update's programs
  take it (a placeholder row through `batching.make_chunks` and `weigh_rows`), placed by
  `spec`."""
  chunk = ts.weigh_rows(batching.make_chunks(
      [batching.Row([0], [0] * (length - 1), [0.0] * (length - 1), 0.0)],
      chunk_rows=train_cfg.chunk_rows, buckets=(length,), pad_id=0,
      vision_fields=vision_fields), train_cfg.loss, 1)[0]
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=spec) for k, v in chunk.items()}


def _frozen_tokens(config, params, ids, visions, slots: int) -> np.ndarray:
  """[R, slots, D] a frozen tower's tokens (params: "embed" and "visual") of each row's
  prompt images, in `multimodal.vision_tokens`' compact form; a group's rows, which share
  their entry, are encoded once."""
  model = models.of(config)
  out = np.zeros((len(ids), slots, config.hidden_size), np.float32)
  done = {}
  for r, v in enumerate(visions):
    if v is None:
      continue
    if id(v) not in done:
      row = ids[r:r + 1]
      done[id(v)] = np.asarray(model.multimodal_vision_tokens(
          config, params, row, **model.multimodal_inputs(config, row, v[0], v[1]),
          slots=slots), np.float32)[0]
    out[r] = done[id(v)]
  return out


def _step_fields(chunk: dict) -> dict:
  """The chunk's fields the train step reads."""
  return {k: v for k, v in chunk.items() if k != TEACHER_VISION}


def _scorer_fields(name: str, chunk: dict) -> dict:
  """The chunk as scorer `name` reads it: the teacher's, with its own tower's tokens in place
  of the student's (and no trained tower's inputs)."""
  if name != "teacher_logprobs" or TEACHER_VISION not in chunk:
    return _step_fields(chunk)
  return {**{k: v for k, v in chunk.items() if k != TEACHER_VISION and
             not k.startswith(ts.TOWER_FIELDS)}, "vision_tokens": chunk[TEACHER_VISION]}


def longest_row(config, method: Method, prompt_overhead: int) -> int:
  """The longest train row the config bounds: a BCQ/NCQ prompt (or a question, when
  `rollout.max_prompt_tokens` is set) with its images' tokens, and the longest completion (a teacher response, for
  methods that train on one)."""
  reformulates = method.reformulates and (config.zppo.bcq or config.zppo.ncq)
  prompt = max(config.zppo.max_prompt_tokens if reformulates else 0,
               config.rollout.max_prompt_tokens) + prompt_overhead + (
                   config.vision.max_tokens if config.vision.enabled else 0)
  teacher = method.teacher_in_group or method.teacher_answers_all
  return prompt + max(config.rollout.max_new_tokens,
                      config.teacher.max_new_tokens if teacher else 0)


def longest_chunk(config, method: Method, model_config, prompt_overhead: int) -> int:
  """The length of the longest chunk the update compiles: the bucket of the longest row
  (`longest_row`), at most the model's context."""
  buckets = batching.length_buckets(model_config.max_position_embeddings,
                                    config.train.length_bucket)
  return batching.bucket_of(min(longest_row(config, method, prompt_overhead), buckets[-1]),
                            buckets)
