"""The run configuration: every field the trainer reads, and the paper's methods as presets.

Config files in `configs/` are a few lines on top of this (big_vision style):

    def get_config(arg=None):
      return run_config.method_config("zppo", arg)

and any field is overridden on the command line, `--config.buffer.capacity=256`. `arg`
(after the file name, `--config configs/zppo.py:size=2b,bcq_only`) selects the model scale
and ablations; see `method_config`.
"""

from __future__ import annotations

import importlib.util
import os
import re

import ml_collections
from absl import logging

from zppo_jax.models import FAMILIES  # names only: no model (nor JAX) is imported
from zppo_jax.rl import methods

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DIR = os.path.join(REPO, "zppo_jax", "assets")
TEACHER_SOURCES = ("none", "dataset", "model")
NCQ_POLICIES = ("unsolved", "always")
LONG_QUESTIONS = ("skip", "cut")

# Real scale: student sizes trained with the 27B teacher, and starting mesh shapes
# (data, fsdp, tensor) per platform; -1 takes the remaining devices.
SIZES = ("0.8b", "2b", "4b", "9b")
MESHES = {
    "cpu": (1, -1, 1),
    "gpu_8xh100": (-1, 8, 1),       # FSDP within each 8-GPU node, data parallel across nodes
    "tpu_v5p": (1, -1, 1),          # FSDP over the slice (95 GB HBM per chip)
    "tpu_v6e": (1, -1, 1),          # 32 GB per chip: FSDP over >= 32 chips (zppo_jax.memory;
                                    # the 0.8B/2B's 2 KV heads do not split 4 ways)
}

# Rows of a gradient chunk (14336 tokens each at these settings), per mesh and student size:
# the train step's activations scale with the rows a device holds. From zppo_jax.aot's TPU
# compiles (benchmarks/RESULTS.md): 4 rows a chip on a v5p-64 take 35.5 GiB at 2B, 59.3 at
# 4B and 69.5 at 9B with the delta rule solved chunk by chunk (66.6, 105.6 and 107.5 before,
# when the 4B and 9B took 2 rows). On v6e, 2 rows a chip take 19.2 GiB at 2B on a v6e-32,
# and 1 row 17.8 GiB at 9B on a v6e-64 (the slice the 4B and 9B need): 64 rows serve both
# slices (a smaller student holds less of everything). The GPU rows keep the same rows a
# device on 16 H100s: not compiled here.
CHUNK_ROWS = {
    "cpu": dict.fromkeys(SIZES, 128),
    "gpu_8xh100": {"0.8b": 64, "2b": 64, "4b": 32, "9b": 32},
    "tpu_v5p": dict.fromkeys(SIZES, 128),
    "tpu_v6e": dict.fromkeys(SIZES, 64),
}


# config.mesh.rules' default (sharding.py): logical axis -> mesh axis (or tuple of mesh axes,
# or None = replicated); the mesh axes are (data, fsdp, tensor).
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("heads", "tensor"),
    ("linear_qkv", "tensor"),
    ("linear_v", "tensor"),
    ("linear_heads", "tensor"),
    ("layers", None),
    ("norm", None),
    ("head_dim", None),
    ("conv_kernel", None),
)


def config_module(relpath: str):
  """The module of a file under configs/ (files named on the command line, not a package),
  e.g. `config_module("tiny.py").get_config()`."""
  path = os.path.join(REPO, "configs", relpath)
  spec = importlib.util.spec_from_file_location(
      "configs." + relpath.removesuffix(".py").replace("/", "."), path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing for the command-line tools (`app.run(main, flags_parser=...)`), with
  an override of a field the config does not have (`--config.foo=1`) reported as one line
  naming it, not a traceback."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    found = re.search(r"[A-Za-z_]\w*", str(e))
    if found is None:
      raise
    missing, hint = found.group(0), re.search(r'Did you mean "([^"]+)"', str(e))
    named = [a.split("=")[0] for a in argv
             if a.startswith("--config.") and missing in a.split("=")[0].split(".")]
    raise SystemExit(f"error: {named[0] if named else '--config.*'}: the config has no field "
                     f"{missing!r}" + (f" (did you mean {hint.group(1)!r}?)" if hint else
                                       " (fields: zppo_jax/run_config.py)")) from None


def label(config) -> str:
  """The run's name in logs and results: `config.name`, else its method."""
  return config.name or config.method


def base_config() -> ml_collections.ConfigDict:
  """All fields, with defaults for a ZPPO run on the tiny built-in models."""
  c = ml_collections.ConfigDict()
  c.method = "zppo"             # an entry of zppo_jax/rl/methods.py: what the step does
  c.name = ""                   # the run's label in logs and results ("" = method)
  c.seed = 0
  c.compile_cache = "default"   # persistent XLA cache: "default" (~/.cache/zppo_jax/xla), a
                                # directory, or "" (off); JAX_COMPILATION_CACHE_DIR wins
  c.precompile = True           # compile every train chunk length the config allows at start
  c.total_steps = 40            # optimizer steps of the run (`--config.total_steps=N`)

  c.model = dict(family="qwen3_5")   # zppo_jax/models: the student's and teacher's family
  c.student = dict(
      path=os.path.join(TINY_DIR, "tiny_student"),  # a Hugging Face checkpoint directory
      dtype="float32",
      init="checkpoint",        # checkpoint | random (from `architecture`, HF config fields)
      architecture={})
  c.tokenizer = ""              # tokenizer.json directory; "" = the student's
  c.teacher = dict(
      source="dataset",         # none | dataset (Question.teacher_responses) | model
      path=os.path.join(TINY_DIR, "tiny_teacher"),  # HF checkpoint when source == "model"
      dtype="float32",
      num_rollouts=4,           # teacher samples per hard question (source == "model")
      temperature=1.0,
      max_new_tokens=160)

  c.data = dict(
      source="synthetic",       # synthetic | a .jsonl / .parquet path | tfds:<name>, then
                                # ;split=, ;format=, ... (data.sources.parse_spec)
      synthetic_size=20000,
      level_weights=(0.3, 0.3, 0.25, 0.15),
      styles=("worked",),       # synthetic: solution styles of a row's teacher_responses
                                # (worked | direct; data.synthetic.ArithmeticSource)
      review_fraction=0.0,      # synthetic: share of rows that show candidate solutions
                                # in their question (how the tiny student learns to read them;
                                # synthetic:visual: share of the rows that are not read rows)
      read_fraction=0.0,        # synthetic:visual: share of rows that only ask what the
                                # image shows (how the tiny VLMs learn to read it)
      format="",                # "" = our own rows (or a TFDS preset); else a row format of
                                # data.benchmarks (gsm8k, math500, aime, mmlu, mmlu_pro, arc, ...)
      tfds_data_dir="",
      on_error="raise",         # raise | skip malformed rows
      long_questions="skip",    # skip | cut a question whose prompt is over
                                # rollout.max_prompt_tokens (counted in questions/too_long)
      shuffle=True,
      image_root="")            # the directory relative image references are read from
  c.questions_per_step = 8      # new questions per step (all hosts; a multiple of them)

  c.rollout = dict(
      group_size=8,             # G, rollouts per question (and per BCQ/NCQ prompt)
      max_new_tokens=160,
      max_prompt_tokens=0,      # a question's chat prompt; 0 = the student's
                                # max_position_embeddings - max_new_tokens
      temperature=1.0,          # the train step scores at temperature 1: keep 1 for on-policy
      top_p=1.0,
      enable_thinking=True,
      system="")

  c.reward = dict(               # grading conventions: README "Grading"
      format_weight=0.0,        # bonus for a well-formed response (</think>, then a box)
      timeout_s=2.0,            # symbolic (sympy) check of one answer pair, then wrong
      workers=0,                # symbolic-check processes per host; 0 = half the CPUs, 1-8
      join_boxes=True,          # `\boxed{1}, \boxed{2}` at the end is the list answer 1, 2
      rel_tol=0.0,              # relative tolerance between non-integers (integers: exact)
      unordered_lists=True,     # a bare list `4, 10, -2` matches in any order
      evaluate_expressions=False,  # `2^{10}` / `5!` count for the gold number 1024 / 120
      reduced_fractions=False)  # a fraction must be in lowest terms

  c.buffer = dict(
      enabled=True,
      capacity=64,
      threshold=0.5,            # admit below, graduate at or above
      replay_per_step=4,        # buffered questions replayed per step (new:replay mix)
      replay_order="uniform")   # uniform | oldest

  c.zppo = dict(
      bcq=True,                 # teacher solved x: question + correct teacher + wrong student
      ncq=True,                 # question + the student's wrong rollouts
      ncq_policy="unsolved",    # unsolved (teacher cannot solve x) | always
      bcq_per_question=1,       # BCQ prompts per hard question, each with another wrong rollout
      max_prompt_tokens=768,    # budget of a BCQ/NCQ user message (tokenizer tokens)
      max_candidate_tokens=256,
      max_ncq_responses=4)

  c.distill = dict(
      correct_only=True,        # off-policy distillation imitates graded-correct responses
      student_rollouts=True)    # False: pure SFT, no student sampling (needs buffer off)

  c.dynamic_sampling = dict(
      enabled=False,            # drop zero-variance groups from the update (DAPO) ...
      max_rounds=0)             # ... and top up with up to this many extra batches of new
                                #     questions while fewer than questions_per_step remain

  # Vision-language runs: the student's (and teacher's) vision tower loaded; each
  # question's images before its prompts (the question's, its BCQ's and NCQ's).
  c.vision = dict(
      enabled=False,
      train_tower=False,        # False: the student's tower is frozen (the train step takes
                                # its tokens); True: trained with the language model
      min_pixels=0,             # image pixel bounds; 0 = the checkpoint's processor's
      max_pixels=0,
      cache_images=256,         # decoded images kept (a revisited question reads its once)
      max_tokens=0)             # vision tokens a question's images take at most: the fixed
                                # prompt shapes hold them (more compiles another shape)

  c.num_iterations = 1          # optimisation passes over one rollout batch (PPO epochs)
  c.train = train_config()
  c.train.optimizer.update(learning_rate=5e-5, warmup_steps=0, total_steps=40)
  c.train.compute_dtype = "float32"

  # Held-out evaluation (zppo_jax.evaluate): sets as `data.benchmarks` specs, each question
  # sampled k times; every > 0 also evaluates during training (at step 0 when at_start).
  c.eval = dict(
      benchmarks=("heldout=synthetic:heldout;limit=64", "transfer=synthetic:transfer;limit=32"),
      k=4,                      # samples per question: avg@k and pass@k
      pass_at=(),               # more pass@j (j <= k) from the same samples
      temperature=1.0,
      top_p=1.0,
      max_new_tokens=0,         # 0 = rollout.max_new_tokens
      batch_size=64,            # questions per sampler call
      every=0,
      at_start=True)

  c.mesh = dict(shape=MESHES["cpu"], axis_types="auto",
                rules=LOGICAL_AXIS_RULES)  # logical axis -> mesh axes (sharding.from_config)

  # dir: "" = <workdir>/checkpoints; on several hosts a place all of them share (gs://...)
  c.checkpoint = dict(every=10, keep=3, async_save=True, dir="")
  # kl_to_start: score the trained rows under the starting student too (train/kl_to_start;
  # keeps a copy of its params, one more forward pass per chunk)
  c.log = dict(every=1, samples_every=10, num_samples=2, tensorboard=True, progress=True,
               kl_to_start=False)
  c.export = dict(at_end=True, dir="")  # "" = <workdir>/export
  return c


def train_config() -> ml_collections.ConfigDict:
  """`config.train`, the slice the train step reads (train_step.TrainStep): optimizer, loss
  and step settings; method configs override fields."""
  return ml_collections.ConfigDict(dict(
      optimizer=dict(
          learning_rate=1e-6, schedule="constant", warmup_steps=0, total_steps=1000,
          final_lr_fraction=0.1, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8,
          max_grad_norm=1.0),
      loss=dict(
          name="grpo", scale_std=True, epsilon_low=0.2, epsilon_high=0.28, beta=0.0,
          aggregation="token_mean", max_tokens=0, correction="truncate", correction_cap=2.0,
          mask_truncated=False, forward_kl=0.0),
      chunk_rows=32,           # rows per gradient chunk (a multiple of the batch shards)
      length_bucket=128,       # chunk lengths are multiples of this (coarser past 8x it)
      logprob_chunk=256,       # sequence positions per chunk of the vocabulary projection
      delta_chunk_size=64,     # chunk of the Gated DeltaNet chunked rule
      remat="none",            # per layer block: none | full | dots
      attention="xla",         # full attention of train / scored rows: xla (blocked softmax,
                               # O(T^2) memory) | splash (Pallas TPU kernel, O(T)) |
                               # splash_interpret (that kernel interpreted: any backend)
      param_dtype="float32",   # master params (and optimizer state)
      compute_dtype="bfloat16",
  ))


def validate(config, process_count: int = 1):
  """Errors naming the config field whose value cannot work (the reward fields are checked
  by `rewards.Grader.from_config`, the data sources when they open)."""
  def check(field, value, allowed):
    if value not in allowed:
      raise ValueError(f"config.{field} must be one of {allowed}, got {value!r}")
  check("teacher.source", config.teacher.source, TEACHER_SOURCES)
  check("zppo.ncq_policy", config.zppo.ncq_policy, NCQ_POLICIES)
  for field in ("total_steps", "questions_per_step", "rollout.group_size", "num_iterations",
                "rollout.max_new_tokens"):
    value = config
    for part in field.split("."):
      value = value[part]
    if value < 1:
      raise ValueError(f"config.{field} must be >= 1, got {value}")
  methods.check(methods.get(config.method), config)
  check("model.family", config.model.family, FAMILIES)
  check("student.init", config.student.init, ("checkpoint", "random"))
  if config.student.init == "random" and not config.tokenizer:
    raise ValueError("config.student.init='random' has no checkpoint to take a tokenizer from: "
                     "set config.tokenizer")
  check("data.long_questions", config.data.long_questions, LONG_QUESTIONS)
  if config.vision.train_tower and not config.vision.enabled:
    raise ValueError("config.vision.train_tower=True needs config.vision.enabled=True")
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
  if config.questions_per_step % process_count:
    raise ValueError(f"config.questions_per_step={config.questions_per_step} (the global batch) "
                     f"must be a multiple of the {process_count} processes")
  if (config.zppo.bcq or config.zppo.ncq) and not config.buffer.enabled:
    logging.warning("BCQ/NCQ without the replay buffer: hard questions are reformulated once, "
                    "never revisited")


def _options(arg: str | None) -> dict[str, str]:
  """"size=2b,bcq_only" -> {"size": "2b", "bcq_only": ""}."""
  out = {}
  for part in filter(None, (arg or "").split(",")):
    key, _, value = part.partition("=")
    out[key.strip()] = value.strip()
  return out


def _method(c, name: str, buffer: bool):
  """The fields the method's entry fixes: its loss, its teacher, BCQ/NCQ, the buffer."""
  method = methods.get(name)
  c.method = name
  c.name = name + ("+buffer" if buffer and not method.buffer else "")
  c.buffer.enabled = buffer
  c.zppo.bcq = c.zppo.ncq = method.reformulates
  c.teacher.source = {methods.NO_TEACHER: "none", methods.RESPONSES: "dataset",
                      methods.LOGPROBS: "model"}[method.teacher]
  c.train.loss.name = method.loss


ABLATIONS = ("bcq_only", "ncq_only", "ncq_always", "capacity", "threshold", "buffer", "vlm")


def method_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of one method of the paper's comparison.

  `arg` options (comma separated):
    size=0.8b|2b|4b|9b   real scale: Qwen3.5 student of that size, 27B teacher sampled
                         in-process, paths under `root=` (default /checkpoints), mesh=
    mesh=cpu|gpu_8xh100|tpu_v5p|tpu_v6e
    buffer               the † variant of a baseline (same replay buffer as ZPPO)
    bcq_only, ncq_only, ncq_always, capacity=N, threshold=X   ZPPO ablations
    vlm                  with size=: the paper's vision-language setting (`_vision_scale`)
  """
  opts = _options(arg)
  unknown = set(opts) - set(ABLATIONS) - {"size", "mesh", "root"}
  if unknown:
    raise ValueError(f"unknown config option(s) {sorted(unknown)} for {name}; options are "
                     f"size=, mesh=, root=, {', '.join(ABLATIONS)}")
  c = base_config()
  _method(c, name, buffer=methods.get(name).buffer or "buffer" in opts)
  if "bcq_only" in opts:
    c.zppo.ncq = False
  if "ncq_only" in opts:
    c.zppo.bcq = False
  if "ncq_always" in opts:
    c.zppo.ncq_policy = "always"
  if "capacity" in opts:
    c.buffer.capacity = int(opts["capacity"])
  if "threshold" in opts:
    c.buffer.threshold = float(opts["threshold"])
  if "vlm" in opts and "size" not in opts:
    raise ValueError("the vlm option needs size= (configs/tiny_vlm.py is the tiny one)")
  if "size" in opts:
    _real_scale(c, opts["size"], opts.get("root", "/checkpoints"), opts.get("mesh", "tpu_v5p"))
    if "vlm" in opts:
      _vision_scale(c, opts.get("root", "/checkpoints"))
  elif "mesh" in opts:
    c.mesh.shape = MESHES[opts["mesh"]]
  return c


def _real_scale(c, size: str, root: str, mesh: str):
  """Official Qwen3.5 weights (downloaded beforehand, e.g. `huggingface-cli download
  Qwen/Qwen3.5-0.8B --local-dir /checkpoints/Qwen3.5-0.8B`) and the paper-like settings."""
  if size not in SIZES:
    raise ValueError(f"size must be one of {SIZES}, got {size!r}")
  if mesh not in MESHES:
    raise ValueError(f"mesh must be one of {sorted(MESHES)}, got {mesh!r}")
  c.student.path = os.path.join(root, f"Qwen3.5-{size.upper()}")
  c.student.dtype = "float32"                    # master weights; compute in bfloat16
  c.train.compute_dtype = "bfloat16"
  c.train.remat = "full"
  if mesh.startswith("tpu"):   # O(T) attention memory: 66 vs 85 GiB a v5p chip at 2B (aot)
    c.train.attention = "splash"
  c.train.chunk_rows = CHUNK_ROWS[mesh][size]
  c.train.optimizer.update(learning_rate=1e-6, warmup_steps=10, total_steps=200,
                           schedule="constant")
  c.total_steps = 200
  if c.teacher.source != "none":
    c.teacher.source = "model"
  c.teacher.update(path=os.path.join(root, "Qwen3.5-27B"), dtype="bfloat16", num_rollouts=4,
                   max_new_tokens=4096)
  c.data.source = "tfds:math_dataset;split=train"
  c.questions_per_step = 64
  c.rollout.update(group_size=8, max_new_tokens=4096)
  c.buffer.update(capacity=2048, replay_per_step=64)
  c.zppo.update(max_prompt_tokens=8192, max_candidate_tokens=3072)
  c.eval.update(benchmarks=("gsm8k=tfds:gsm8k;split=test",
                            "arc_challenge=tfds:ai2_arc/ARC-Challenge;split=test"),
                every=50, k=4, temperature=0.6, top_p=0.95, batch_size=256)
  c.mesh.shape = MESHES[mesh]
  c.checkpoint.every = 20


def _vision_scale(c, root: str):
  """The paper's main setting: student and teacher as the vision-language models their
  repositories are (towers loaded, the student's frozen), image questions in training, the
  VLM benchmarks in evaluation. The files are the Hugging Face datasets' Parquet files,
  downloaded beforehand (training rows: our own format with an `images` column)."""
  data = os.path.join(root, "data")
  c.vision.update(enabled=True, max_pixels=512 * 32 * 32, max_tokens=1040)  # 2 images
  c.data.source = os.path.join(data, "vlm_train.parquet")
  c.eval.benchmarks = (
      f"mathvista={data}/mathvista_testmini.parquet;format=mathvista",
      f"chartqa={data}/chartqa_test.parquet;format=chartqa",
      f"mmmu={data}/mmmu_validation.parquet;format=mmmu")
