r"""The ZPPO training loop (and every baseline of the paper, by config).

    python -m zppo_jax.train --config configs/tiny.py --workdir /tmp/zppo \
        [--config.total_steps=20] [--export_only]

One step, as `../shared/ZPPO.md` describes it, each stage a function below:
  questions      new questions from the data pipeline + questions replayed from the buffer
  roll_out       the student samples G completions per question; `grade` scores them
  teacher_pass   the teacher answers the hard ones (in-process sampler, or the dataset's
                 precomputed responses); solved = at least one correct response
  buffer         admit / revisit / graduate / evict (`replay_buffer.update`)
  reformulate    BCQ and NCQ prompts for the hard questions; the student rolls out on them
  train_rows     groups -> sequences with advantages, cut into fixed-shape chunks
  update         the jitted train step (`num_iterations` passes over the batch)
and then metrics, samples, checkpoint. Rerunning the same command resumes from the newest
readable checkpoint in the workdir.

On several hosts (`--distributed`, or automatic on Cloud TPU VMs and SLURM) each process runs
this same loop over a global mesh: it reads its share of the questions and grades its share
of the rollouts, and every host holds the whole step (`multihost`). SIGTERM on any host ends
the run after the current step with a checkpoint, exit status 0.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from zppo_jax import checkpointing, compilation, evaluate, multihost, run_config, sharding

from zppo_jax.rl import batching, losses, prompts, replay_buffer, rewards, rollouts
from zppo_jax import workdir as run_dir
from zppo_jax import train_step as ts
from zppo_jax.data import benchmarks, pipeline, sources, synthetic
from zppo_jax.data.records import Question
from zppo_jax.data.tokenizer import GENERATION_PREFIX, Tokenizer
from zppo_jax.metric_writer import MetricWriter
from zppo_jax.models import qwen3_5
from zppo_jax.sampler import LENGTH, Sampler, bucket

ORIGINAL, BCQ, NCQ = "original", "bcq", "ncq"


# ------------------------------------------------------------------------------ records

@dataclasses.dataclass
class Group:
  """G sequences sharing one prompt: the unit of group-relative advantages."""
  kind: str                       # ORIGINAL | BCQ | NCQ
  question: Question
  prompt: list[int]
  completions: list[list[int]]
  logprobs: list[list[float]]     # sampler log-probs of the completion tokens
  truncated: list[bool]
  texts: list[str]                # as graded: generation prefix + completion
  rewards: np.ndarray             # [G]
  off_policy: np.ndarray          # [G] bool: a teacher response standing in the group
  replayed: bool = False

  @property
  def accuracy(self) -> float:
    return float(np.mean(self.rewards >= 1.0))


@dataclasses.dataclass
class Models:
  tokenizer: Tokenizer
  config: qwen3_5.Qwen3_5Config
  sampler: Sampler
  teacher_config: qwen3_5.Qwen3_5Config | None = None
  teacher_params: dict | None = None
  teacher_sampler: Sampler | None = None
  ref_params: dict | None = None


def _question(d: dict) -> Question:
  return Question(**{**d, "choices": tuple(d.get("choices", ())),
                     "teacher_responses": tuple(d.get("teacher_responses", ()))})


# ------------------------------------------------------------------------------ setup

LONG_QUESTIONS = ("skip", "cut")


def _check_method_label(config):
  """`config.method` names a paper method only if the fields that make the method agree:
  `--config.method=grpo` on a ZPPO config would relabel a ZPPO run."""
  # "<method>[+buffer][-<setup>]": configs/tiny.py labels off_policy_distill+buffer-tiny
  base, _, suffix = config.method.split("-", 1)[0].partition("+")
  if base not in run_config.METHODS:
    return  # a label of the user's own
  loss, distill = config.train.loss.name, base.endswith("_distill")
  buffered = base in run_config.BUFFERED or suffix == "buffer"
  checks = [  # (fields, agree, what the method needs)
      ("zppo.bcq/ncq", bool(config.zppo.bcq or config.zppo.ncq) == (base == "zppo"),
       "on" if base == "zppo" else "off"),
      ("teacher_in_group", config.teacher_in_group == (base == "grpo_teacher_response"),
       base == "grpo_teacher_response"),
      ("train.loss.name", loss == base if distill else not loss.endswith("_distill"),
       base if distill else "a GRPO-family loss"),
      ("buffer.enabled", config.buffer.enabled == buffered, buffered)]
  wrong = [f"{field} (needs {want})" for field, agree, want in checks if not agree]
  if wrong:
    raise ValueError(f"config.method={config.method!r} names a method whose fields disagree: "
                     f"{', '.join(wrong)}. config.method is only a label: start from "
                     f"configs/{base}.py (or set the fields), or give a label of your own")


def validate(config):
  """Errors naming the config field whose value cannot work."""
  def check(field, value, allowed):
    if value not in allowed:
      raise ValueError(f"config.{field} must be one of {allowed}, got {value!r}")
  check("teacher.source", config.teacher.source, run_config.TEACHER_SOURCES)
  check("zppo.ncq_policy", config.zppo.ncq_policy, run_config.NCQ_POLICIES)
  check("train.loss.name", config.train.loss.name, tuple(losses.POLICY_LOSSES))
  for field in ("total_steps", "questions_per_step", "rollout.group_size", "num_iterations",
                "rollout.max_new_tokens"):
    value = config
    for part in field.split("."):
      value = value[part]
    if value < 1:
      raise ValueError(f"config.{field} must be >= 1, got {value}")
  needs_teacher = (config.zppo.bcq or config.teacher_in_group
                   or config.train.loss.name in ("on_policy_distill", "off_policy_distill"))
  if needs_teacher and config.teacher.source == "none":
    raise ValueError("this method needs teacher responses: set config.teacher.source to "
                     "'dataset' or 'model'")
  if config.train.loss.name == "on_policy_distill" and config.teacher.source != "model":
    raise ValueError("train.loss.name='on_policy_distill' scores with the teacher model: set "
                     "config.teacher.source='model' and config.teacher.path")
  if not config.distill.student_rollouts and (
      config.train.loss.name != "off_policy_distill" or config.buffer.enabled):
    raise ValueError("config.distill.student_rollouts=False (pure SFT) needs "
                     "train.loss.name='off_policy_distill' and buffer.enabled=False")
  if config.student.init not in ("checkpoint", "random"):
    raise ValueError(f"config.student.init must be 'checkpoint' or 'random', got "
                     f"{config.student.init!r}")
  if config.student.init == "random" and not config.tokenizer:
    raise ValueError("config.student.init='random' has no checkpoint to take a tokenizer from: "
                     "set config.tokenizer")
  rewards.Grader.from_config(config.reward)
  check("data.long_questions", config.data.long_questions, LONG_QUESTIONS)
  ranges = [("buffer.threshold", config.buffer.threshold, 0 < config.buffer.threshold <= 1,
             "in (0, 1]"),
            ("buffer.replay_per_step", config.buffer.replay_per_step,
             config.buffer.replay_per_step >= 0, ">= 0"),
            ("buffer.capacity", config.buffer.capacity,
             config.buffer.capacity >= 1 or not config.buffer.enabled, ">= 1"),
            ("train.optimizer.learning_rate", config.train.optimizer.learning_rate,
             config.train.optimizer.learning_rate > 0, "> 0"),
            ("rollout.group_size", config.rollout.group_size,
             config.rollout.group_size >= 2 or not config.distill.student_rollouts,
             ">= 2 (a group of one has no advantage to learn from)"),
            ("rollout.temperature", config.rollout.temperature,
             config.rollout.temperature >= 0, ">= 0"),
            ("rollout.top_p", config.rollout.top_p, 0 < config.rollout.top_p <= 1, "in (0, 1]"),
            ("rollout.max_prompt_tokens", config.rollout.max_prompt_tokens,
             config.rollout.max_prompt_tokens >= 0, ">= 0 (0: the model's limit)")]
  for field, value, ok, allowed in ranges:
    if not ok:
      raise ValueError(f"config.{field} must be {allowed}, got {value!r}")
  _check_method_label(config)
  if config.questions_per_step % jax.process_count():
    raise ValueError(f"config.questions_per_step={config.questions_per_step} (the global batch) "
                     f"must be a multiple of the {jax.process_count()} processes")
  if (config.zppo.bcq or config.zppo.ncq) and not config.buffer.enabled:
    logging.warning("BCQ/NCQ without the replay buffer: hard questions are reformulated once, "
                    "never revisited")


def open_data(config):
  d = config.data
  if d.source == "synthetic":
    return synthetic.ArithmeticSource(d.synthetic_size, seed=config.seed,
                                      level_weights=tuple(d.level_weights),
                                      styles=tuple(d.styles),
                                      review_fraction=d.review_fraction)
  if d.source.startswith("tfds:"):
    body = d.source[len("tfds:"):]  # <name>[:split]; huggingface:<name> keeps its colon
    namespace = "huggingface:" if body.startswith("huggingface:") else ""
    name, _, split = body[len(namespace):].partition(":")
    source = sources.TfdsSource(namespace + name, split or "train", d.tfds_data_dir or None,
                                raw=bool(d.format))
  else:
    source = sources.open_source(d.source)
  return benchmarks.FormattedSource(source, d.format) if d.format else source


def load_student(config, mesh):
  """(model config, params) placed on the mesh; `student.init = "random"` starts from
  scratch with the HF config fields in `student.architecture` (how the tiny models are made)."""
  dtype = jnp.dtype(config.student.dtype)
  if config.student.init == "random":
    model_config = qwen3_5.from_hf_dict(config.student.architecture.to_dict(),
                                        source="config.student.architecture")
    shardings = qwen3_5.param_shardings(model_config, mesh)
    params = jax.jit(lambda: qwen3_5.init_params(model_config, jax.random.key(config.seed), dtype),
                     out_shardings=shardings)()
    return model_config, params
  return qwen3_5.load_hf_checkpoint(config.student.path, dtype, mesh=mesh)


def load_models(config, mesh, student_config, student_params) -> Models:
  tokenizer = Tokenizer.load(config.tokenizer or config.student.path)
  if tokenizer.vocab_size > student_config.vocab_size:
    raise ValueError(f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens, more than "
                     f"the student's vocab_size {student_config.vocab_size}")
  models = Models(tokenizer, student_config, Sampler(student_config, mesh=mesh))
  if config.teacher.source == "model":
    t_config, t_params = qwen3_5.load_hf_checkpoint(
        config.teacher.path, jnp.dtype(config.teacher.dtype), mesh=mesh)
    if t_config.vocab_size != student_config.vocab_size:
      raise ValueError(f"teacher {config.teacher.path} has vocab_size {t_config.vocab_size}, the "
                       f"student {student_config.vocab_size}: they must share a tokenizer")
    models.teacher_config, models.teacher_params = t_config, t_params
    models.teacher_sampler = Sampler(t_config, mesh=mesh)
  if config.train.loss.beta or config.log.kl_to_start:
    models.ref_params = student_params  # the frozen starting policy (never donated)
  return models


# ------------------------------------------------------------------------------ stages

def next_batch(data_iter) -> list[Question]:
  """The next global batch of new questions: each host reads its share, all hold all."""
  shares = multihost.allgather([dataclasses.asdict(q) for q in next(data_iter)])
  return [_question(d) for share in shares for d in share]


def questions(config, data_iter, buffer_state, step) -> list[tuple[Question, bool]]:
  """This step's (question, replayed) pairs: a batch of new ones, then up to
  `buffer.replay_per_step` buffered ones not already in the batch."""
  new = next_batch(data_iter)
  out = [(q, False) for q in new]
  if config.buffer.enabled and config.buffer.replay_per_step:
    rng = np.random.default_rng(rollouts.derive_seed(config.seed, step, 1))
    replay = replay_buffer.sample(buffer_state, config.buffer.replay_per_step, rng,
                                  order=config.buffer.replay_order,
                                  exclude=frozenset(q.id for q in new))
    out += [(_question(e.question), True) for e in replay]
  return out


def prompt_limit(config, max_position_embeddings: int) -> int:
  """Tokens a question's chat prompt may take: `rollout.max_prompt_tokens`, or what the
  model's context leaves after `rollout.max_new_tokens`; a setting the model cannot hold
  is an error naming the fields."""
  r = config.rollout
  limit = r.max_prompt_tokens or max_position_embeddings - r.max_new_tokens
  longest = max(limit, config.zppo.max_prompt_tokens if (config.zppo.bcq or config.zppo.ncq)
                else 0)
  if limit < 1 or longest + r.max_new_tokens > max_position_embeddings:
    raise ValueError(
        f"config.rollout.max_prompt_tokens={r.max_prompt_tokens} (0: the model's limit), "
        f"config.zppo.max_prompt_tokens={config.zppo.max_prompt_tokens} and "
        f"config.rollout.max_new_tokens={r.max_new_tokens} do not fit the student's "
        f"max_position_embeddings={max_position_embeddings}")
  return limit


def fit_questions(config, tok: Tokenizer, pairs: Sequence[tuple[Question, bool]],
                  limit: int) -> tuple[list[tuple[Question, bool]], int]:
  """The (question, replayed) pairs whose chat prompt fits `limit` tokens, and how many did
  not: those are skipped, or with `data.long_questions="cut"` kept with the middle of the
  question replaced by prompts.ELISION (its beginning and its final ask survive)."""
  out, too_long = [], 0
  overhead = len(rollouts.prompt_ids(tok, config, [""])[0])
  room = limit - overhead - len(tok.encode(prompts.ELISION)) - 4  # 4: merges at the seams
  for q, replayed in pairs:
    if len(q.question) + overhead <= limit:  # a token holds at least one character
      out.append((q, replayed))
      continue
    # a huge question is cut in characters before it is tokenised (no 10M-token encodes)
    text = q.question if len(q.question) <= 64 * limit else (
        q.question[:32 * limit] + q.question[-32 * limit:])
    ids = tok.encode(text)
    if len(ids) + overhead <= limit:
      out.append((q, replayed))
      continue
    too_long += 1
    if config.data.long_questions == "cut" and room > 0:
      head, tail = room - room // 2, room // 2
      cut = tok.decode(ids[:head]) + prompts.ELISION + tok.decode(ids[len(ids) - tail:])
      out.append((dataclasses.replace(q, question=cut), replayed))
  if too_long:
    logging.warning("%d question(s) over rollout.max_prompt_tokens=%d tokens %s", too_long,
                    limit, "cut" if config.data.long_questions == "cut" else "skipped")
  return out, too_long


def sample_shapes(config, prompt_overhead: int) -> dict[str, dict]:
  """The shapes of the step's sampler calls, fixed by the config: prompt rows from two
  buckets (half or all of the most a call can have: questions_per_step + replay_per_step
  questions, and for BCQ/NCQ prompts as many as the hard ones can make);
  prompt slots that hold rollout.max_prompt_tokens (when set; else the prompts' own
  buckets), and for BCQ/NCQ prompts zppo.max_prompt_tokens plus the chat template's
  `prompt_overhead`. Varying counts then reuse a few compiled programs."""
  z = config.zppo
  questions = config.questions_per_step + (
      config.buffer.replay_per_step if config.buffer.enabled else 0)
  per_question = (z.bcq_per_question if z.bcq else 0) + (1 if z.ncq else 0)
  buckets = lambda most: tuple(sorted({max(1, most // 2), most}))
  limit = config.rollout.max_prompt_tokens
  return {"questions": dict(rows=buckets(questions),
                            prompt_slots=bucket(limit, 16) if limit else 0),
          "reformulated": dict(rows=buckets(questions * max(per_question, 1)),
                               prompt_slots=bucket(z.max_prompt_tokens + prompt_overhead, 16))}


def _call_shape(shape: dict | None, num_prompts: int) -> dict:
  """`Sampler.generate`'s rows and prompt_slots for a call of `num_prompts` in `shape`."""
  if not shape:
    return {}
  rows = [r for r in shape["rows"] if r >= num_prompts]
  return {"rows": rows[0] if rows else 0, "prompt_slots": shape.get("prompt_slots", 0)}


def roll_out(models, params, config, items: Sequence[tuple[str, Question, str, bool]],
             seed: int, shape: dict | None = None) -> list[Group]:
  """G student completions of each (kind, question, user message, replayed), graded against
  the question's answer, sampled in the fixed `shape` (`sample_shapes`). With
  `distill.student_rollouts` off (pure SFT), groups carry only their prompt."""
  if not items:
    return []
  tok, g = models.tokenizer, config.rollout.group_size
  prompt_ids = rollouts.prompt_ids(tok, config, [user for _, _, user, _ in items])
  if not config.distill.student_rollouts:
    return [Group(kind, q, ids, [], [], [], [], np.zeros(0, np.float32), np.zeros(0, bool), rep)
            for (kind, q, _, rep), ids in zip(items, prompt_ids)]
  out, texts = rollouts.sample(models.sampler, params, tok, prompt_ids, config, num_samples=g,
                               seed=seed, max_new_tokens=config.rollout.max_new_tokens,
                               temperature=config.rollout.temperature,
                               top_p=config.rollout.top_p, **_call_shape(shape, len(items)))
  scores = rollouts.grade(texts, [q.answer for _, q, _, _ in items for _ in range(g)], config)
  groups = []
  for i, (kind, q, _, replayed) in enumerate(items):
    rows = slice(i * g, (i + 1) * g)
    groups.append(Group(kind, q, prompt_ids[i], out.tokens[rows], out.logprobs[rows],
                        [r == LENGTH for r in out.finish_reason[rows]], texts[rows],
                        scores[rows], np.zeros(g, bool), replayed))
  return groups


def teacher_pass(models, config, hard: Sequence[Question], seed: int,
                 shape: dict | None = None) -> dict[str, list[str]]:
  """The teacher's *correct* responses to each hard question (empty: it cannot solve it),
  sampled in the fixed `shape` (`sample_shapes`)."""
  if config.teacher.source == "none" or not hard:
    return {}
  if config.teacher.source == "dataset":
    responses = {q.id: list(q.teacher_responses) for q in hard}
  else:
    tok = models.tokenizer
    ids = rollouts.prompt_ids(tok, config, [q.question for q in hard])
    n = config.teacher.num_rollouts
    _, texts = rollouts.sample(models.teacher_sampler, models.teacher_params, tok, ids,
                               config, num_samples=n, seed=seed,
                               max_new_tokens=config.teacher.max_new_tokens,
                               temperature=config.teacher.temperature,
                               top_p=config.rollout.top_p, **_call_shape(shape, len(hard)))
    responses = {q.id: texts[i * n:(i + 1) * n] for i, q in enumerate(hard)}
  pairs = [(r, q.answer) for q in hard for r in responses[q.id]]
  correct = iter(rollouts.grade([r for r, _ in pairs], [a for _, a in pairs], config) >= 1.0)
  return {q.id: [r for r in responses[q.id] if next(correct)] for q in hard}


def reformulate(config, hard: Sequence[Group], solutions: dict[str, list[str]],
                rng: np.random.Generator, count_tokens
                ) -> tuple[list[tuple[str, Question, str]], int]:
  """(kind, question, user message) of the BCQ and NCQ prompts of the hard groups, and how
  many could not be built (`prompts.Unbuildable`: a question too long for the budget, no
  usable wrong rollout, ...), skipped with a warning.

  BCQ when the teacher solved x: its first correct response and one wrong student rollout
  (a different one for each of `bcq_per_question`). NCQ from the wrong rollouts: when the
  teacher could not solve x ("unsolved"), or for every hard question ("always")."""
  z = config.zppo
  budget = prompts.Budget(z.max_prompt_tokens, z.max_candidate_tokens, z.max_ncq_responses)
  out, skipped = [], 0

  def build(kind, q, make):
    nonlocal skipped
    try:
      out.append((kind, q, make()))
    except prompts.Unbuildable as e:
      skipped += 1
      logging.warning("skipped the %s prompt of question %s: %s", kind, q.id, e)

  for group in hard:
    q = group.question
    wrong = [t for t, r in zip(group.texts, group.rewards) if r < 1.0]
    solved = solutions.get(q.id, [])
    if z.bcq and solved and wrong:
      for i in rng.permutation(len(wrong))[:z.bcq_per_question]:
        build(BCQ, q, lambda: prompts.bcq(q.question, solved[0], wrong[i], rng, budget=budget,
                                          count_tokens=count_tokens))
    if z.ncq and wrong and (z.ncq_policy == "always" or not solved):
      build(NCQ, q, lambda: prompts.ncq(q.question, wrong, rng, budget=budget,
                                        count_tokens=count_tokens))
  return out, skipped


def _completion_ids(tok: Tokenizer, response: str, enable_thinking: bool) -> list[int]:
  """A full assistant response as the tokens a sampler would have produced after the
  generation prompt (which already holds the generation prefix), ending the turn."""
  prefix = GENERATION_PREFIX[enable_thinking]
  body = response[len(prefix):] if response.startswith(prefix) else response
  return tok.encode(body) + [tok.im_end_id]


def teacher_in_group(groups: Sequence[Group], solutions, tok, config):
  """GRPO + teacher response: in each hard group the teacher solved, its correct response
  replaces the last wrong rollout and is flagged off-policy (see `losses.grpo`)."""
  swaps = [(group, int(np.flatnonzero(group.rewards < 1.0)[-1]))
           for group in groups
           if solutions.get(group.question.id) and np.any(group.rewards < 1.0)]
  scores = rollouts.grade([solutions[g.question.id][0] for g, _ in swaps],  # one gather for all
                 [g.question.answer for g, _ in swaps], config)
  for (group, i), score in zip(swaps, scores):
    response = solutions[group.question.id][0]
    group.completions[i] = _completion_ids(tok, response, config.rollout.enable_thinking)
    group.logprobs[i] = [0.0] * len(group.completions[i])
    group.truncated[i] = False
    group.texts[i] = response
    group.rewards[i] = score
    group.off_policy[i] = True


def distill_groups(config, groups: Sequence[Group], solutions, tok) -> list[Group]:
  """Off-policy distillation: one group per question of its teacher responses (graded
  correct ones when `distill.correct_only`), imitated by next-token NLL."""
  out = []
  for group in groups:
    q = group.question
    responses = solutions.get(q.id) if config.distill.correct_only else list(q.teacher_responses)
    if not responses:
      continue
    comps = [_completion_ids(tok, r, config.rollout.enable_thinking) for r in responses]
    n = len(comps)
    out.append(Group(ORIGINAL, q, group.prompt, comps, [[0.0] * len(c) for c in comps],
                     [False] * n, list(responses), np.ones(n, np.float32), np.ones(n, bool)))
  return out


def train_rows(groups: Sequence[Group], advantages: Sequence[np.ndarray]) -> list[batching.Row]:
  """The groups' sequences with their advantages, as the train step takes them."""
  return [batching.Row(g.prompt, c, lp, float(a), bool(tr), bool(off))
          for g, adv in zip(groups, advantages)
          for c, lp, tr, a, off in zip(g.completions, g.logprobs, g.truncated, adv, g.off_policy)]


# ------------------------------------------------------------------------------ the run

class Trainer:
  """The loop's state and its compiled programs; `run()` trains to `total_steps`."""

  def __init__(self, config, workdir: str, on_config_change: str = "refuse"):
    validate(config)
    run_dir.claim(workdir, config, on_config_change, write=jax.process_index() == 0)
    compilation.enable_cache(config.compile_cache)
    self.config, self.workdir = config, workdir
    self.mesh = sharding.make_mesh(tuple(config.mesh.shape), axis_types=config.mesh.axis_types)
    self.model_config, params = load_student(config, self.mesh)
    self.max_prompt_tokens = prompt_limit(config, self.model_config.max_position_embeddings)
    self.models = load_models(config, self.mesh, self.model_config, params)
    self.prompt_overhead = len(rollouts.prompt_ids(self.models.tokenizer, config, [""])[0])
    self.sample_shapes = sample_shapes(config, self.prompt_overhead)
    cfg = config.train
    self.optimizer = ts.make_optimizer(cfg.optimizer)
    self.shardings = ts.state_shardings(self.model_config, self.optimizer, self.mesh,
                                        param_dtype=jnp.dtype(config.student.dtype))
    self.state = ts.init_state(params, self.optimizer, config.seed, self.shardings)
    self.step_fn = ts.TrainStep(self.model_config, self.optimizer, cfg, self.mesh,
                                self.shardings)
    self.score_fn = ts.jit_score(self.model_config, cfg, self.mesh, self.shardings.params)
    # Rollouts sample in the compute dtype (bfloat16 at scale), as the train step scores:
    # one sharded cast per step, not float32 master weights in every decode step.
    compute = jnp.dtype(cfg.compute_dtype)
    self._sampling_params = (
        (lambda params: params) if compute == jnp.dtype(config.student.dtype) else
        jax.jit(lambda params: jax.tree.map(lambda p: p.astype(compute), params),
                out_shardings=self.shardings.params))
    if self.models.teacher_params is not None and cfg.loss.name == "on_policy_distill":
      self.teacher_score_fn = ts.jit_score(
          self.models.teacher_config, cfg, self.mesh,
          qwen3_5.param_shardings(self.models.teacher_config, self.mesh))
    shards = sharding.shard_count("batch", self.mesh)
    if cfg.chunk_rows < 1 or cfg.chunk_rows % shards:
      raise ValueError(f"config.train.chunk_rows={cfg.chunk_rows} must be a positive multiple "
                       f"of the mesh's {shards} batch shards")
    self.length_buckets = batching.length_buckets(self.model_config.max_position_embeddings,
                                                  cfg.length_bucket)
    d = config.data
    self.data_errors = pipeline.ErrorCounter()  # complete once the dataset is made
    self.dataset = pipeline.make_dataset(
        open_data(config), batch_size=config.questions_per_step, seed=config.seed,
        shuffle=d.shuffle, on_error=d.on_error, errors=self.data_errors)
    self.data_iter = iter(self.dataset)
    self.buffer = replay_buffer.BufferState()
    self.step = 0
    self.checkpointer = checkpointing.Checkpointer(
        config.checkpoint.dir or os.path.join(workdir, "checkpoints"),
        every=config.checkpoint.every,
        keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
    self.evaluator = (evaluate.Evaluator(config, self.models.tokenizer, self.models.sampler)
                      if config.eval.every else None)
    self._restore()
    if config.precompile:
      self.precompile()
    # From here on SIGTERM means "checkpoint and stop" (before, nothing would be lost).
    self.sync = multihost.StepSync()

  # -- programs ------------------------------------------------------------------------------

  def longest_row(self) -> int:
    """The longest train row the config bounds: a BCQ/NCQ prompt (or a question, when
    `rollout.max_prompt_tokens` is set) and the longest completion."""
    c = self.config
    prompt = max(c.zppo.max_prompt_tokens if (c.zppo.bcq or c.zppo.ncq) else 0,
                 c.rollout.max_prompt_tokens) + self.prompt_overhead
    teacher = c.teacher_in_group or c.train.loss.name == "off_policy_distill"
    return prompt + max(c.rollout.max_new_tokens, c.teacher.max_new_tokens if teacher else 0)

  def precompile(self):
    """Builds the programs of every shape the config fixes, so that no step stops to compile
    one (or, with the persistent cache, loads them all): the train step's and the other
    policies' scores for every chunk length up to `longest_row`, the sampler's for each call
    kind and row bucket (question prompts only when rollout.max_prompt_tokens fixes their
    slots), the evaluation's."""
    c, m = self.config, self.models
    params = self._sampling_params(self.state.params)
    stops = m.tokenizer.stop_token_ids
    questions, reformulated = (self.sample_shapes[k] for k in ("questions", "reformulated"))
    calls = []  # (sampler, params, shape, max_new_tokens, temperature, num_samples)
    if questions["prompt_slots"]:
      if c.distill.student_rollouts:
        calls.append((m.sampler, params, questions, c.rollout.max_new_tokens,
                      c.rollout.temperature, c.rollout.group_size))
      if c.teacher.source == "model":
        calls.append((m.teacher_sampler, m.teacher_params, questions, c.teacher.max_new_tokens,
                      c.teacher.temperature, c.teacher.num_rollouts))
    if c.zppo.bcq or c.zppo.ncq:
      calls.append((m.sampler, params, reformulated, c.rollout.max_new_tokens,
                    c.rollout.temperature, c.rollout.group_size))
    for sampler, p, shape, new, temperature, n in calls:
      for rows in shape["rows"]:
        sampler.precompile(p, rows, shape["prompt_slots"], max_new_tokens=new,
                           temperature=temperature, top_p=c.rollout.top_p, num_samples=n,
                           stop_token_ids=stops, rows=rows, prompt_slots=shape["prompt_slots"])
    if self.evaluator:
      self.evaluator.precompile(params)
    spec = ts.batch_sharding(self.mesh)
    longest = min(self.longest_row(), self.length_buckets[-1])
    chunks = []
    for length in self.length_buckets[:self.length_buckets.index(
        batching.bucket_of(longest, self.length_buckets)) + 1]:
      chunk = ts.weigh_rows(batching.make_chunks(
          [batching.Row([0], [0] * (length - 1), [0.0] * (length - 1), 0.0)],
          chunk_rows=c.train.chunk_rows, buckets=(length,), pad_id=0), c.train.loss, 1)[0]
      chunk = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=spec) for k, v in chunk.items()}
      chunks.append({**chunk, **self._scored_shapes(chunk)})
    self.step_fn.precompile(self.state, chunks)

  def _scorers(self) -> list[tuple[str, object, dict]]:
    """(field, jitted score program, params) of each other policy's log-probs the loss
    needs: the teacher's, the frozen reference's, the policy's own before the update."""
    c, m = self.config, self.models
    return ([("teacher_logprobs", self.teacher_score_fn, m.teacher_params)]
            if c.train.loss.name == "on_policy_distill" else []) + (
        [("ref_logprobs", self.score_fn, m.ref_params)] if m.ref_params is not None else []) + (
        [("old_logprobs", self.score_fn, self.state.params)] if c.num_iterations > 1 else [])

  def _scored_shapes(self, chunk: dict) -> dict:
    """The fields `_scored` adds to such a chunk, after compiling the programs that score
    it."""
    out = {}
    for name, fn, params in self._scorers():
      fn.lower(params, chunk).compile()
      tokens = chunk["tokens"]
      out[name] = jax.ShapeDtypeStruct(tokens.shape, jnp.float32, sharding=tokens.sharding)
    return out

  # -- checkpoints ---------------------------------------------------------------------------

  def _host_state(self) -> dict:
    return {"step": self.step, "buffer": replay_buffer.to_json(self.buffer),
            "data": self.data_iter.get_state()}

  def _restore(self):
    found = self.checkpointer.restore_latest(
        checkpointing.abstract(self.state, self.shardings))
    if found is None:
      return
    step, self.state, host = found
    self.step = host["step"]
    self.buffer = replay_buffer.from_json(host["buffer"])
    self.data_iter.set_state(host["data"])
    logging.info("resumed from %s at step %d", self.checkpointer.directory, step)

  def save(self, force: bool = False):
    self.checkpointer.save(self.step, self.state, self._host_state(), force=force)

  def export(self, path: str | None = None) -> str:
    """The student as a Hugging Face checkpoint directory (safetensors, config, tokenizer)."""
    path = path or self.config.export.dir or os.path.join(self.workdir, "export")
    source = self.config.student.path if self.config.student.init != "random" else None
    qwen3_5.save_hf_checkpoint(path, self.model_config, self.state.params, source=source)
    if source is None and jax.process_index() == 0:  # from scratch: the tokenizer comes along
      for name in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.isfile(os.path.join(self.config.tokenizer, name)):
          shutil.copy2(os.path.join(self.config.tokenizer, name), os.path.join(path, name))
    return path

  # -- one step ------------------------------------------------------------------------------

  def train_step(self) -> dict:
    c, m, step = self.config, self.models, self.step
    timer, times = time.perf_counter(), {}
    graded = rewards.TALLY.snapshot()

    def lap(name):
      nonlocal timer
      now = time.perf_counter()
      times[f"time/{name}"] = now - timer
      timer = now

    params = self._sampling_params(self.state.params)
    batch_questions, too_long = fit_questions(
        c, m.tokenizer, questions(c, self.data_iter, self.buffer, step), self.max_prompt_tokens)
    shapes = self.sample_shapes
    groups = roll_out(m, params, c, [(ORIGINAL, q, q.question, r) for q, r in batch_questions],
                      rollouts.derive_seed(c.seed, step, 2), shapes["questions"])
    rounds = 0
    while (c.dynamic_sampling.enabled and rounds < c.dynamic_sampling.max_rounds
           and sum(not _flat(g) for g in groups) < c.questions_per_step):
      rounds += 1
      fitted, more = fit_questions(
          c, m.tokenizer, [(q, False) for q in next_batch(self.data_iter)], self.max_prompt_tokens)
      too_long += more
      extra = [(ORIGINAL, q, q.question, False) for q, _ in fitted]
      groups += roll_out(m, params, c, extra,
                         rollouts.derive_seed(c.seed, step, 2, rounds), shapes["questions"])
    lap("rollout")

    threshold = c.buffer.threshold
    distill = c.train.loss.name == "off_policy_distill"
    hard = [g for g in groups if g.completions and g.accuracy < threshold]
    solutions = teacher_pass(m, c, [g.question for g in (groups if distill else hard)],
                             rollouts.derive_seed(c.seed, step, 3), shapes["questions"])
    lap("teacher")

    events = replay_buffer.Events()
    if c.buffer.enabled:
      self.buffer, events = replay_buffer.update(
          self.buffer,
          [(dataclasses.asdict(g.question), g.accuracy) for g in groups if g.completions], step,
          threshold=threshold, capacity=c.buffer.capacity)

    rng = np.random.default_rng(rollouts.derive_seed(c.seed, step, 4))
    graduated = {e.id for e in events.graduated}
    reformulated, unbuilt = reformulate(c, [g for g in hard if g.question.id not in graduated],
                                        solutions, rng, m.tokenizer.count_tokens)
    extra_groups = roll_out(m, params, c, [(kind, q, user, False)
                                           for kind, q, user in reformulated],
                            rollouts.derive_seed(c.seed, step, 5), shapes["reformulated"])
    lap("reformulated_rollout")

    if c.teacher_in_group:
      teacher_in_group(groups, solutions, m.tokenizer, c)
    if distill:
      train_groups = distill_groups(c, groups, solutions, m.tokenizer)
    else:
      train_groups = groups + extra_groups
    flat = [_flat(g) for g in train_groups]
    if c.dynamic_sampling.enabled:
      train_groups = [g for g, f in zip(train_groups, flat) if not f]
    train_metrics = self.update(train_groups)
    lap("train")

    metrics = self.step_metrics(groups, extra_groups, hard, solutions, events, flat,
                                train_metrics)
    metrics.update(times)
    metrics["reformulate/skipped"], metrics["questions/too_long"] = unbuilt, too_long
    metrics["data/skipped_rows"] = self.data_errors.skipped
    metrics.update(compilation.COUNTS.metrics())  # cumulative: flat once every shape is seen
    metrics["time/step"] = sum(times.values())
    graded = {k: v - graded[k] for k, v in rewards.TALLY.snapshot().items()}
    metrics["time/grade"] = graded["seconds"]  # within the rollout stages' times
    metrics["grade/symbolic"], metrics["grade/timeouts"] = graded["symbolic"], graded["timeouts"]
    sampled = sum(len(t) for g in groups + extra_groups for t in g.completions)
    metrics["throughput/sampled_tokens_per_s"] = sampled / max(
        times["time/rollout"] + times["time/reformulated_rollout"], 1e-9)
    metrics["dynamic_sampling/rounds"] = rounds
    self._last_groups = groups + extra_groups
    original = {x.question.id: x.accuracy for x in groups if x.completions}
    self._last_reformulations = [
        {"kind": x.kind, "question_id": x.question.id, "accuracy": x.accuracy,
         "original_accuracy": original[x.question.id],
         "teacher_solved": bool(solutions.get(x.question.id))}
        for x in extra_groups if x.completions]
    self.step += 1
    return metrics

  def update(self, groups: Sequence[Group]) -> dict:
    """The train step(s) on the groups; {} when nothing is left to train on."""
    c = self.config
    if not groups:
      return {"update/skipped": 1.0}
    if c.train.loss.name == "off_policy_distill":
      advantages = [np.zeros(len(g.completions), np.float32) for g in groups]
    else:
      advantages = list(losses.group_advantages(
          np.stack([g.rewards for g in groups]), c.train.loss.scale_std))
    rows = train_rows(groups, advantages)
    # Rows without gradient (a zero-variance group under GRPO) only count in the loss's
    # normalisation: no program runs on them.
    inert = losses.inert_rows([r.advantage for r in rows], c.train.loss)
    trained = [r for r, skip in zip(rows, inert) if not skip]
    chunks = ts.weigh_rows(
        batching.make_chunks(trained, chunk_rows=c.train.chunk_rows,
                             buckets=self.length_buckets,
                             pad_id=self.models.tokenizer.endoftext_id),
        c.train.loss, c.rollout.max_new_tokens,
        left_out=[r.loss_tokens(c.train.loss.mask_truncated)
                  for r, skip in zip(rows, inert) if skip])
    chunks = [self._scored(ts.shard_batch(chunk, self.mesh)) for chunk in chunks]
    for n in range(c.num_iterations):
      self.state, metrics = self.step_fn(self.state, chunks)
      if n == 0:  # the sampled tokens scored by the params that sampled them
        mismatch = metrics.get("logprob_mismatch")
    if mismatch is not None:
      metrics["logprob_mismatch"] = mismatch
    out = {f"train/{k}": v for k, v in metrics.items()}
    positions = sum(chunk["tokens"].size for chunk in chunks)
    out.update({"train/rows": float(len(rows)), "train/trained_rows": float(len(trained)),
                "train/chunks": float(len(chunks)),
                "train/tokens": float(sum(r.loss_tokens(c.train.loss.mask_truncated)
                                          for r in rows)),
                "train/trained_tokens": metrics["tokens"],
                "train/padding": 1.0 - sum(len(r) for r in trained) / max(positions, 1)})
    return out

  def _scored(self, chunk: dict) -> dict:
    """A chunk with the log-probs of the other policies its loss needs (`_scorers`), computed
    on the devices and sharded like the chunk."""
    base = dict(chunk)
    for name, fn, params in self._scorers():
      chunk[name] = fn(params, base)["logprobs"]
    return chunk

  def step_metrics(self, groups, extra_groups, hard, solutions, events, flat, train) -> dict:
    c = self.config
    g = c.rollout.group_size
    out = {
        "reward/mean": _mean([x.rewards for x in groups]),
        "reward/new": _mean([x.rewards for x in groups if not x.replayed]),
        "reward/replay": _mean([x.rewards for x in groups if x.replayed]),
        "questions/new": sum(not x.replayed for x in groups),
        "questions/replayed": sum(x.replayed for x in groups),
        "questions/hard": len(hard),
        "groups/all_wrong": sum(bool(len(x.rewards) and np.all(x.rewards < 1.0))
                                for x in groups + extra_groups),
        "groups/all_right": sum(bool(len(x.rewards) and np.all(x.rewards >= 1.0))
                                for x in groups + extra_groups),
        "zero_advantage_fraction": float(np.mean(flat)) if flat else 0.0,
        "teacher/solved": sum(bool(solutions.get(x.question.id)) for x in hard),
        "response/length": _mean([[len(t) for t in x.completions] for x in groups]),
        "response/truncated": _mean([x.truncated for x in groups]),
        # mean -log p of the sampled tokens: an unbiased estimate of the policy's entropy
        "rollout/entropy": _mean([-np.asarray(lp) for x in groups
                                  for lp, off in zip(x.logprobs, x.off_policy) if not off]),
        "buffer/size": len(self.buffer),
        "buffer/admitted": len(events.admitted),
        "buffer/graduated": len(events.graduated),
        "buffer/evicted": len(events.evicted),
    }
    for kind in (BCQ, NCQ):
      mine = [x for x in extra_groups if x.kind == kind]
      out[f"{kind}/count"] = len(mine)
      out[f"{kind}/accuracy"] = _mean([x.rewards for x in mine])
    everyone = self.buffer.entries + self.buffer.retired
    graduates = [e for e in self.buffer.retired if e.outcome == replay_buffer.GRADUATED]
    for key, n in replay_buffer.bucket_counts(everyone, g).items():
      out[f"buffer/admitted_total/{key}"] = n
    for key, n in replay_buffer.bucket_counts(graduates, g).items():
      out[f"buffer/graduated_total/{key}"] = n
    out["buffer/graduated_total"] = len(graduates)
    out.update(train)
    return out

  def rollout_samples(self) -> list[dict]:
    rows = []
    for group in self._last_groups[:self.config.log.num_samples]:
      if not group.texts:
        continue
      rows.append({"kind": group.kind, "question_id": group.question.id,
                   "prompt": self.models.tokenizer.decode(group.prompt),
                   "response": group.texts[0], "reward": float(group.rewards[0]),
                   "answer": group.question.answer})
    return rows

  def evaluate(self) -> dict:
    """The held-out sets on the current params: `eval/...` metrics, and the per-question
    results in <workdir>/eval/step_<N>.json/.md. Sampling seeds depend on the run's seed
    only, so every step (and `zppo_jax.evaluate` on a checkpoint) draws alike."""
    c = self.config
    results = self.evaluator.run(self._sampling_params(self.state.params), c.seed)
    evaluate.write(results, os.path.join(self.workdir, "eval"), c, stem=f"step_{self.step:06d}",
                   title=f"{c.method} after {self.step} steps",
                   extra={"method": c.method, "seed": c.seed, "step": self.step})
    return evaluate.metrics(results, c.eval.pass_at)

  def close(self):
    self.sync.close()
    self.checkpointer.close()

  def fingerprint(self) -> str:
    """Of the host-side state every host must hold alike: step, replay buffer, data position."""
    return multihost.fingerprint([self.step, replay_buffer.to_json(self.buffer),
                                  self.data_iter.get_state()])

  def run(self) -> bool:
    """Trains to `total_steps`; False when stopped early by SIGTERM (after a checkpoint)."""
    c = self.config
    writer = MetricWriter(self.workdir, tensorboard=c.log.tensorboard, start_step=self.step)
    bar = None
    console = jax.process_index() == 0
    if console and self.step:
      print(f"resuming at step {self.step} from {self.checkpointer.directory}", flush=True)
    if c.log.progress and console:
      import tqdm
      bar = tqdm.tqdm(total=c.total_steps, initial=self.step, desc=c.method, unit="step")
    stopped, exported = False, None
    try:
      while self.step < c.total_steps:
        if self.sync.check(self.step, self.fingerprint() if jax.process_count() > 1 else ""):
          stopped = True
          break
        held_out = {}
        if self.evaluator and self.step % c.eval.every == 0 and (self.step or c.eval.at_start):
          held_out = self.evaluate()  # params after `self.step` updates, logged on that line
        metrics = {**self.train_step(), **held_out}
        step = self.step - 1
        if step % c.log.every == 0 or self.step == c.total_steps or held_out:
          writer.write(step, metrics)
        if c.log.samples_every and step % c.log.samples_every == 0:
          writer.records("samples", step, self.rollout_samples())
        writer.records("reformulations", step, self._last_reformulations)
        self.save()
        if bar is not None:
          bar.update(1)
          bar.set_postfix(_progress(metrics), refresh=True)
      if self.checkpointer.manager.latest_step() != self.step:
        self.save(force=True)
      self.checkpointer.wait()
      logging.info("process %d: host state fingerprint %s at step %d", jax.process_index(),
                   self.fingerprint(), self.step)
      if not stopped and self.evaluator:
        writer.write(self.step, self.evaluate())  # the final params, on a line of their own
      if stopped:
        logging.warning("stopped by a signal after %d steps, checkpointed: rerun the same "
                        "command to resume", self.step)
      elif c.export.at_end:
        exported = self.export()
    finally:
      if bar is not None:
        bar.close()
      writer.close()
      self.close()
    if console:
      print(self._summary(exported), flush=True)
    return not stopped

  def _summary(self, exported: str | None) -> str:
    """Where a finished (or stopped) run's results are."""
    lines = [f"{self.config.method}: {self.step}/{self.config.total_steps} steps in "
             f"{self.workdir}",
             f"  metrics      {os.path.join(self.workdir, 'metrics.jsonl')} (TensorBoard: "
             f"{os.path.join(self.workdir, 'tensorboard')})",
             f"  checkpoints  {self.checkpointer.directory} (newest: step "
             f"{self.checkpointer.manager.latest_step()})"]
    if exported:
      lines.append(f"  export       {exported}")
    evals = sorted(glob.glob(os.path.join(self.workdir, "eval", "step_*.md")))
    if evals:
      lines.append(f"  evaluation   {evals[-1]}")
    return "\n".join(lines)


def _progress(m: dict) -> dict[str, str]:
  """The progress line's fields of a step's metrics."""
  return {"reward": f"{m['reward/mean']:.3f}", "buffer": f"{m['buffer/size']:d}",
          "adm/grad": f"{m['buffer/admitted']:d}/{m['buffer/graduated']:d}",
          "bcq": f"{m['bcq/accuracy']:.2f}", "ncq": f"{m['ncq/accuracy']:.2f}",
          # a collapse shows here first: entropy towards 0, every group flat
          "entropy": f"{m['rollout/entropy']:.3f}", "flat": f"{m['zero_advantage_fraction']:.2f}",
          "tok/s": f"{m['throughput/sampled_tokens_per_s']:.0f}"}


def _flat(group: Group) -> bool:
  """Zero-variance group: no learning signal."""
  return bool(len(group.rewards)) and bool(np.all(group.rewards == group.rewards[0]))


def _mean(arrays) -> float:
  values = [np.asarray(a, np.float64).ravel() for a in arrays]
  values = [v for v in values if v.size]
  return float(np.concatenate(values).mean()) if values else float("nan")


# ------------------------------------------------------------------------------ main



def main(argv):
  del argv
  multihost.initialize(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                       _PROCESS_ID.value)
  config = _CONFIG.value
  if not flags.FLAGS["verbosity"].present:  # libraries' INFO lines only when asked for
    logging.set_verbosity(logging.WARNING)
  trainer = Trainer(config, _WORKDIR.value, _ON_CONFIG_CHANGE.value)
  if _EXPORT_ONLY.value:
    if trainer.step == 0:
      trainer.close()
      raise SystemExit(f"error: --export_only: no readable checkpoint in {_WORKDIR.value} to "
                       "export")
    print(trainer.export())
    trainer.close()
    return
  trainer.run()


if __name__ == "__main__":  # flags only here: other modules import the stages
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file (:arg optional).")
  _WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and exports go here.")
  _EXPORT_ONLY = flags.DEFINE_bool("export_only", False,
                                   "Export the newest checkpoint's student and exit.")
  _ON_CONFIG_CHANGE = flags.DEFINE_enum(
      "on_config_change", "refuse", run_dir.ON_CHANGE,
      "When the workdir holds a run with another config: refuse (naming the differing fields), "
      "continue it with the new settings, or move the old run aside and start a new_run.")
  _DISTRIBUTED = flags.DEFINE_enum(
      "distributed", "auto", multihost.DISTRIBUTED,
      "Start jax.distributed (one process per host): auto = when the flags below are given or "
      "a Cloud TPU VM / SLURM / Open MPI cluster is detected.")
  _COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                     "host:port of process 0 (GPU clusters, CPU tests).")
  _NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
  _PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=run_config.parse_flags)
