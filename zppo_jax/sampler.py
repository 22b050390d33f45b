"""In-process sampler for Qwen3.5: one jitted prefill, then one jitted decode loop.

Rollouts run inside the training process on the params the train step updates (sharded or
not), so there is no server: the trainer casts its params to the compute dtype once a step,
into the layout the sampler takes them (`decode_rules`: each weight split over every device
along its features, so that a decode step moves activations, not weights). A call pads its
prompts on the left to a length bucket and its batch to a batch bucket, and the loop length
to a bucket of new tokens; prompts of new lengths inside a bucket reuse the compiled programs
(`Sampler.compile_count` counts the traces). Sampling settings other than `top_k`, greedy or
not, and whether top-p filters at all are traced values, so changing them does not
recompile either.

    from zppo_jax import sampler
    out = sampler.generate(config, params, prompts, max_new_tokens=256, temperature=1.0,
                           num_samples=8, seed=0, stop_token_ids=(248046, 248044))
    out.tokens, out.logprobs, out.finish_reason
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from zppo_jax import models
from zppo_jax import sharding as sharding_lib

STOP, LENGTH = "stop", "length"


@dataclasses.dataclass(frozen=True)
class Completions:
  """What `generate` returns: one row per (prompt, sample), prompt-major (the samples of
  prompt i are rows i*num_samples ... i*num_samples + num_samples - 1), completions only.

  tokens: sampled ids; a stop token, when one ends the row, is the last id.
  logprobs: log-probability of each sampled token under the temperature-scaled policy
    log_softmax(logits / temperature) (temperature 1 when greedy), before top-k/top-p
    truncation: a train step that divides its logits by the same temperature reproduces them.
  finish_reason: "stop" (ended with a stop token) or "length" (hit max_new_tokens).
  """
  tokens: list[list[int]]
  logprobs: list[list[float]]
  finish_reason: list[str]


def padded_size(n: int, minimum: int, buckets: Sequence[int] | None = None,
                what: str = "length"):
  """The smallest bucket holding n: from `buckets` if given, else a power of two >= minimum."""
  if buckets:
    for b in sorted(buckets):
      if b >= n:
        return b
    raise ValueError(f"{what} {n} exceeds the largest bucket {max(buckets)}")
  return max(minimum, 1 << max(n - 1, 0).bit_length())


def top_p_threshold(probs, top_p):
  """Per row, the probability tau such that {p >= tau} is the top-p nucleus: the smallest set
  of most likely tokens whose mass reaches top_p (ties with the last one kept).

  A bisection on the bit patterns of float32 (ordered like the values for p >= 0): 32 masked
  sums over the vocabulary instead of a sort, which XLA runs slowly on CPU (10 ms for
  [64, 1024]) and which costs O(V log V) everywhere.
  probs: [N, V] float32; top_p: scalar. Returns [N] float32.
  """
  def body(_, bounds):
    lo, hi = bounds  # mass(p >= lo) >= top_p > mass(p >= hi), as bit patterns
    mid = lo + (hi - lo) // 2
    tau = jax.lax.bitcast_convert_type(mid, jnp.float32)[:, None]
    enough = jnp.sum(jnp.where(probs >= tau, probs, 0.0), axis=-1) >= top_p * total
    return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

  total = jnp.sum(probs, axis=-1)  # 1 up to rounding; comparing against it keeps lo valid
  lo = jnp.zeros(probs.shape[:1], jnp.int32)
  hi = jax.lax.bitcast_convert_type(jnp.max(probs, axis=-1), jnp.int32) + 1
  lo, _ = jax.lax.fori_loop(0, 32, body, (lo, hi))
  return jax.lax.bitcast_convert_type(lo, jnp.float32)


def sample_tokens(logits, keys, temperature, top_p, *, top_k: int = 0,
                  filter_top_p: bool = False, greedy: bool = False):
  """Draws one token per row.

  Args:
    logits: [N, V] float32.
    keys: [N] PRNG keys, one per row, so a row's draw does not depend on the other rows.
    temperature, top_p: scalars (traced). Filters apply in transformers' order: temperature,
      then top-k, then top-p on the renormalised top-k distribution.
    top_k: keep the k most likely tokens (0: all; ties with the k-th kept). Static: a shape.
    filter_top_p: apply top_p at all (static: it costs a bisection over the vocabulary).
    greedy: argmax (temperature, top-k and top-p are ignored).
  Returns:
    (tokens [N] int32, logprobs [N] float32), logprobs as described in `Completions`.
  """
  if greedy:
    tokens = jnp.argmax(logits, axis=-1)
    logp = jax.nn.log_softmax(logits)
  else:
    scaled = logits / temperature
    logp = jax.nn.log_softmax(scaled)
    kept = scaled
    if top_k and top_k < logits.shape[-1]:
      kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
      kept = jnp.where(scaled >= kth, kept, -jnp.inf)
    if filter_top_p:
      probs = jax.nn.softmax(kept)
      kept = jnp.where(probs >= top_p_threshold(probs, top_p)[:, None], kept, -jnp.inf)
    tokens = jax.vmap(jax.random.categorical)(keys, kept)
  tokens = tokens.astype(jnp.int32)
  return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


class Sampler:
  """Compiled generation for one model config (and mesh); the trainer keeps one per model.

  A call with P prompts of at most T tokens, n samples each and m new tokens runs on
  B = padded_size(P) prompt rows (a power of two, a multiple of the batch shards), N = B·n sample
  rows, and a cache of S = padded_size(T) + padded_size(m) slots in the params' dtype:

      2·L_full·N·S·H_kv·head_dim·itemsize             KV cache of the full-attention layers
    + L_linear·N·((K−1)·conv_dim·itemsize + H_v·d_k·d_v·4)   conv and delta-rule state

  (`cache_bytes` evaluates it), plus the prefill's activations for B·padded_size(T) tokens and
  [N, vocab] float32 logits per step. The prefill runs once per prompt; its cache is
  repeated n times, not recomputed.
  """

  def __init__(self, config, *, mesh=None,
               rules=None, prompt_buckets: Sequence[int] | None = None,
               min_prompt_bucket: int = 16, min_new_bucket: int = 16, chunk_size: int = 64):
    self.config, self.model = config, models.of(config)  # the model family's functions
    self.mesh = mesh
    self.rules = rules
    self.prompt_buckets = tuple(prompt_buckets) if prompt_buckets else None
    self.min_prompt_bucket = min_prompt_bucket
    self.min_new_bucket = min_new_bucket
    self.chunk_size = chunk_size
    self.compile_count = 0  # traces of the prefill and decode programs
    self._programs: dict = {}
    if mesh is None:
      self.batch_shards = 1
      self._layout = self._decode_layout = self.model.Layout()
      self.param_rules = self.param_shardings = None
    else:
      self.batch_shards = sharding_lib.shard_count("batch", mesh, rules)
      # the prefill's activations keep their rows split like the prompts (not gathered)
      self._layout = self.model.Layout(mesh=mesh,
                                       batch_axes=sharding_lib.mesh_axes_of("batch", mesh, rules))
      self.param_rules = decode_rules(mesh, rules, self.model.logical_axes(config))
      # a decode step multiplies by the weights where they lie (`Layout.features`)
      self._decode_layout = self._layout._replace(
          feature_axes=sharding_lib.mesh_axes_of("mlp", mesh, self.param_rules))
      # a weight whose features the devices do not divide (Qwen3.5's [hidden, 48] gates on
      # 32 chips) keeps the rules' layout rather than a whole copy on every device
      shapes = self.model.param_shapes(config, jnp.float32)
      self.param_shardings = jax.tree.map(
          lambda x, fsdp, stationary: stationary if (
              math.prod(stationary.shard_shape(x.shape)) <= math.prod(fsdp.shard_shape(x.shape)))
          else fsdp,
          shapes, self.model.param_shardings(config, mesh, rules),
          self.model.param_shardings(config, mesh, self.param_rules))
      head = self.model.head_name(config)
      vocab_dim = self.model.logical_axes(config)[head].index("vocab")
      # (a vocabulary the devices do not divide keeps the head whole on every device)
      self._vocab_split = self.param_shardings[head].spec[vocab_dim] is not None

  # -- sizes ---------------------------------------------------------------------------------

  def shapes(self, num_prompts: int, prompt_len: int, max_new_tokens: int,
             rows: int = 0, prompt_slots: int = 0, new_slots: int = 0):
    """(prompt rows B, prompt slots, new-token slots) that a call of these sizes runs with:
    `rows` / `prompt_slots` / `new_slots` when given and large enough, else the sizes'
    buckets."""
    rows = rows if rows >= num_prompts else padded_size(num_prompts, 1, what="batch")
    rows = -(-rows // self.batch_shards) * self.batch_shards
    slots = prompt_slots if prompt_slots >= prompt_len else padded_size(
        prompt_len, self.min_prompt_bucket, self.prompt_buckets, "prompt length")
    new = new_slots if new_slots >= max_new_tokens else padded_size(
        max_new_tokens, self.min_new_bucket, what="max_new_tokens")
    return rows, slots, new

  def cache_bytes(self, num_prompts: int, prompt_len: int, max_new_tokens: int,
                  num_samples: int = 1, dtype=jnp.bfloat16) -> int:
    """Bytes of the decode cache of such a call; with a mesh (real or abstract), what one
    device holds of it."""
    rows, t, m = self.shapes(num_prompts, prompt_len, max_new_tokens)
    n = rows * num_samples
    cache = jax.eval_shape(lambda: self.model.init_cache(self.config, n, t + m, dtype))
    if self.mesh is None:
      return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
    return sharding_lib.bytes_per_device(cache, self._cache_shardings(n, t + m, dtype))

  def relaid_out_bytes(self, dtype=jnp.bfloat16) -> int:
    """Bytes of the weight copies a decode call holds on a TPU device: XLA's TPU compiler
    lays an argument out with a dim that is a multiple of 128 minor, and copies each stacked
    weight whose split feature dim (its last) is not one into a layout with that dim minor,
    padded to 128 lanes, once a call (read in the 27B teacher's buffer assignment: its
    [48, 5120, 544] MLP stacks on 32 chips, 1.1 GiB a chip in all)."""
    if self.mesh is None:
      return 0
    total = 0
    for x, s in zip(jax.tree.leaves(self.model.param_shapes(self.config, dtype)),
                    jax.tree.leaves(self.param_shardings)):
      local = s.shard_shape(x.shape)
      if x.ndim == 3 and local[-2] >= 128 and local[-1] < x.shape[-1] and local[-1] % 128:
        total += math.prod(local[:-1]) * -(-local[-1] // 128) * 128 * x.dtype.itemsize
    return total

  # -- sharding helpers ----------------------------------------------------------------------

  def _sharding(self, axes, shape):
    return NamedSharding(self.mesh, sharding_lib.logical_to_spec(axes, shape, self.mesh,
                                                                 self.rules))

  def _put(self, x: np.ndarray, axes):
    """Host array -> device array sharded by logical `axes` (each host passes the same global
    array; each device takes its own block)."""
    if self.mesh is None:
      return jnp.asarray(x)
    sharding = self._sharding(axes, x.shape)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  # -- programs ------------------------------------------------------------------------------

  def _prefill_program(self, rows, prompt_slots, new_slots, num_samples, dtype,
                       multimodal: bool = False):
    key = ("prefill", rows, prompt_slots, new_slots, num_samples, jnp.dtype(dtype).name,
           multimodal)
    if key in self._programs:
      return self._programs[key]
    c = self.config
    slots = prompt_slots + new_slots

    def prefill(params, ids_BxT, mask_BxT, embeddings_BxTxD=None, positions_3xBxT=None):
      """Left-padded prompts [B, T] (with images: their input embeddings and multimodal
      positions) -> (cache for N = B·n rows, next-token logits [N, V])."""
      self.compile_count += 1
      cache = self.model.init_cache(c, rows, slots, dtype)
      h_BxTxD, cache = self.model.hidden_states(c, params, ids_BxT, mask_BxT, cache,
                                                chunk_size=self.chunk_size,
                                                embeddings=embeddings_BxTxD,
                                                positions=positions_3xBxT, layout=self._layout)
      logits_BxV = self.model.logits_from_hidden(c, params, h_BxTxD[:, -1]).astype(jnp.float32)
      repeat = lambda axes, x: jnp.repeat(x, num_samples, axis=axes.index("batch")) if (
          "batch" in axes) else x
      cache = jax.tree.map(repeat, self.model.CACHE_LOGICAL_AXES, cache,  # B rows -> N = B·n
                           is_leaf=lambda x: isinstance(x, tuple))
      return cache, jnp.repeat(logits_BxV, num_samples, axis=0)

    if self.mesh is None:
      program = jax.jit(prefill)
    else:
      n = rows * num_samples
      extra = (self._sharding(("batch", None, None), (rows, prompt_slots, c.hidden_size)),
               self._sharding((None, "batch", None), (3, rows, prompt_slots))) if multimodal else ()
      program = jax.jit(
          prefill,
          in_shardings=(self.param_shardings,
                        self._sharding(("batch", None), (rows, prompt_slots)),
                        self._sharding(("batch", None), (rows, prompt_slots))) + extra,
          out_shardings=(self._cache_shardings(n, slots, dtype),
                         self._sharding(("batch", "vocab"), (n, c.vocab_size))))
    self._programs[key] = program
    return program

  def _cache_shardings(self, rows, slots, dtype):
    shape = jax.eval_shape(lambda: self.model.init_cache(self.config, rows, slots, dtype))
    return sharding_lib.named_shardings(self.model.CACHE_LOGICAL_AXES, shape, self.mesh,
                                        self.rules)

  def _decode_program(self, rows, prompt_slots, new_slots, num_samples, dtype, stop_slots,
                      top_k, filter_top_p, greedy):
    key = ("decode", rows, prompt_slots, new_slots, num_samples, jnp.dtype(dtype).name,
           stop_slots, top_k, filter_top_p, greedy)
    if key in self._programs:
      return self._programs[key]
    c = self.config
    n = rows * num_samples
    pick = functools.partial(sample_tokens, top_k=top_k, filter_top_p=filter_top_p,
                             greedy=greedy)
    # each step's logits: computed split over vocab (the head's layout), then sampled with
    # each row's whole vocabulary on the device holding the row
    by_vocab = by_rows = lambda x: x
    if self.mesh is not None and self._vocab_split:
      by_vocab = lambda x: jax.lax.with_sharding_constraint(x, NamedSharding(
          self.mesh, sharding_lib.logical_to_spec((None, "vocab"), x.shape, self.mesh,
                                                  self.param_rules)))
      by_rows = lambda x: jax.lax.with_sharding_constraint(
          x, self._sharding(("batch", None), x.shape))

    def decode(params, cache, logits, live, seed, temperature, top_p, max_new, stop_ids):
      """Samples up to max_new tokens per row; stops early once every row is done."""
      self.compile_count += 1
      row = jnp.arange(n)
      base = jax.random.key(seed)
      row_keys = jax.vmap(lambda r: jax.random.fold_in(
          jax.random.fold_in(base, r // num_samples), r % num_samples))(row)
      step_keys = lambda step: jax.vmap(jax.random.fold_in, (0, None))(row_keys, step)
      is_stop = lambda tok: jnp.any(tok[:, None] == stop_ids[None, :], axis=1)

      def emit(step, new, lp, tokens, logprobs, lengths, stopped):
        """Records the step's tokens of the rows still running (not padding, not stopped)."""
        active = live & ~stopped
        tokens = jax.lax.dynamic_update_slice(tokens, jnp.where(active, new, 0)[:, None],
                                              (0, step))
        logprobs = jax.lax.dynamic_update_slice(logprobs, jnp.where(active, lp, 0.0)[:, None],
                                                (0, step))
        return tokens, logprobs, lengths + active, stopped | (active & is_stop(new))

      tok, lp = pick(logits, step_keys(0), temperature, top_p)
      out = emit(0, tok, lp, jnp.zeros((n, new_slots), jnp.int32),
                 jnp.zeros((n, new_slots), jnp.float32), jnp.zeros((n,), jnp.int32),
                 jnp.zeros((n,), bool))

      def cond(state):
        step, _, _, (*_, stopped) = state
        return (step < max_new) & jnp.any(live & ~stopped)

      def body(state):
        step, cache, tok, out = state
        running = (live & ~out[-1])[:, None]  # finished rows feed a masked (ignored) token
        logits_Nx1xV, cache = self.model.apply(c, params, tok[:, None], running, cache,
                                               chunk_size=self.chunk_size,
                                               layout=self._decode_layout)
        logits_NxV = by_rows(by_vocab(logits_Nx1xV[:, 0]))
        new, lp = pick(logits_NxV.astype(jnp.float32), step_keys(step), temperature, top_p)
        return step + 1, cache, new, emit(step, new, lp, *out)

      _, cache, _, (tokens, logprobs, lengths, stopped) = jax.lax.while_loop(
          cond, body, (jnp.int32(1), cache, tok, out))
      # The cache goes out too, so the donated input buffers alias it and the loop updates the
      # cache in place instead of holding a second copy.
      return (tokens, logprobs, lengths, stopped), cache

    if self.mesh is None:
      program = jax.jit(decode, donate_argnums=1)
    else:
      replicated = NamedSharding(self.mesh, PartitionSpec())
      cache_shardings = self._cache_shardings(n, prompt_slots + new_slots, dtype)
      program = jax.jit(
          decode, donate_argnums=1,
          in_shardings=(self.param_shardings, cache_shardings,
                        self._sharding(("batch", "vocab"), (n, c.vocab_size)),
                        self._sharding(("batch",), (n,))) + (replicated,) * 5,
          # Small outputs, replicated so that every host can read all rows.
          out_shardings=(replicated, cache_shardings))
    self._programs[key] = program
    return program

  def precompile(self, params, num_prompts: int, prompt_len: int, *, max_new_tokens: int,
                 rows: int = 0, prompt_slots: int = 0, new_slots: int = 0, **settings) -> None:
    """Builds the programs that `generate` with these sizes and settings will run, by running
    them once on placeholder prompts for one new token: a run that knows its calls' shapes
    compiles them all at start instead of in the middle of its steps."""
    rows, prompt_slots, new_slots = self.shapes(num_prompts, prompt_len, max_new_tokens, rows,
                                                prompt_slots, new_slots)
    self.generate(params, [[0] * prompt_len] * num_prompts, max_new_tokens=1, rows=rows,
                  prompt_slots=prompt_slots, new_slots=new_slots, **settings)

  def lower(self, params, num_prompts: int, prompt_len: int, *, max_new_tokens: int,
            rows: int = 0, prompt_slots: int = 0, new_slots: int = 0, num_samples: int = 1,
            greedy: bool = False, top_k: int = 0, filter_top_p: bool = False,
            stop_slots: int = 8) -> dict:
    """{"prefill", "decode"}: the programs a `generate` call of these sizes and settings
    runs, lowered for `params` (arrays or ShapeDtypeStructs) and not run: what
    `zppo_jax.aot` compiles for a TPU slice it does not have."""
    rows, prompt_slots, new_slots = self.shapes(num_prompts, prompt_len, max_new_tokens, rows,
                                                prompt_slots, new_slots)
    dtype, n = params["embed"].dtype, rows * num_samples
    ids = jax.ShapeDtypeStruct((rows, prompt_slots), jnp.int32)
    cache = jax.eval_shape(lambda: self.model.init_cache(self.config, n,
                                                         prompt_slots + new_slots, dtype))
    scalar = lambda d: jax.ShapeDtypeStruct((), d)
    decode = self._decode_program(rows, prompt_slots, new_slots, num_samples, dtype,
                                  stop_slots, top_k, filter_top_p, greedy)
    return {"prefill": self._prefill_program(rows, prompt_slots, new_slots, num_samples,
                                             dtype).lower(params, ids, ids),
            "decode": decode.lower(
                params, cache, jax.ShapeDtypeStruct((n, self.config.vocab_size), jnp.float32),
                jax.ShapeDtypeStruct((n,), jnp.bool_), scalar(jnp.uint32), scalar(jnp.float32),
                scalar(jnp.float32), scalar(jnp.int32),
                jax.ShapeDtypeStruct((stop_slots,), jnp.int32))}

  # -- the call ------------------------------------------------------------------------------

  def generate(self, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
               temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
               num_samples: int = 1, seed: int = 0, stop_token_ids: Sequence[int] = (),
               rows: int = 0, prompt_slots: int = 0, new_slots: int = 0,
               images: Sequence | None = None) -> Completions:
    """Samples `num_samples` completions of each prompt (see `Completions`).

    temperature 0 means greedy. The same seed and inputs give the same completions, and a
    row's samples depend only on (seed, prompt index, sample index), not on the batch size
    or the padding. `rows`, `prompt_slots` and `new_slots` pad the call to a shape the
    caller fixed in advance (one compiled program for calls of varying size); a call they
    cannot hold takes its own buckets instead.

    `images`: per prompt, None or (pixel_values [patches, patch_dim], grids [(t, h, w), ...])
    of the images and video frames its placeholder tokens stand for, in order
    (`data.images.PromptImages`; the params hold the vision tower). The tower runs once per prompt and the prefill (shared by the
    `num_samples` samples) places its tokens; decoding continues after the multimodal
    positions.
    """
    c = self.config
    _check_prompts(prompts, c.vocab_size)
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_samples < 1:
      raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if temperature < 0:
      raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
      raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0 <= seed < 2 ** 32:
      raise ValueError(f"seed must be in [0, 2**32), got {seed}")

    rows, prompt_slots, new_slots = self.shapes(len(prompts), max(map(len, prompts)),
                                                max_new_tokens, rows, prompt_slots, new_slots)
    ids = np.zeros((rows, prompt_slots), np.int32)
    mask = np.zeros((rows, prompt_slots), np.int32)
    for i, p in enumerate(prompts):  # left padding: every prompt ends at the last slot
      ids[i, prompt_slots - len(p):] = p
      mask[i, prompt_slots - len(p):] = 1
    live = np.repeat(np.arange(rows) < len(prompts), num_samples)
    stops = np.full((padded_size(len(stop_token_ids), 8),), -1, np.int32)
    stops[:len(stop_token_ids)] = stop_token_ids

    dtype = params["embed"].dtype
    tower = params.get("visual")  # the vision tower runs before the prefill, not inside it
    params = {k: v for k, v in params.items() if k != "visual"}
    if self.mesh is not None:
      # no-op when already in the sampler's layout (the learner's cast and a sampled teacher
      # are); otherwise one copy of the params a call
      params = jax.device_put(params, self.param_shardings)
    prefill = self._prefill_program(rows, prompt_slots, new_slots, num_samples, dtype)
    decode = self._decode_program(rows, prompt_slots, new_slots, num_samples, dtype, len(stops),
                                  top_k, top_p < 1.0, temperature == 0)
    vision_inputs = ()
    if images is not None and any(x is not None for x in images):
      if len(images) != len(prompts):
        raise ValueError(f"images has {len(images)} entries for {len(prompts)} prompts")
      given = [x for x in images if x is not None]
      pixels = np.concatenate([np.asarray(x[0], np.float32) for x in given])
      grids = [tuple(g) for x in given for g in x[1]]
      if tower is None:
        raise ValueError("images were given, but the params hold no vision tower ('visual')")
      inputs = self.model.multimodal_inputs(c, ids, pixels, grids)
      embeddings = self.model.multimodal_embeddings(c, {**params, "visual": tower}, ids,
                                                    **inputs)
      positions = self.model.multimodal_positions(c, ids, mask, inputs["image_grid_thw"],
                                                  inputs["video_grid_thw"])
      vision_inputs = (self._put(np.asarray(embeddings), ("batch", None, None)),
                       self._put(positions, (None, "batch", None)))
      prefill = self._prefill_program(rows, prompt_slots, new_slots, num_samples, dtype, True)
    cache, logits = prefill(params, self._put(ids, ("batch", None)),
                            self._put(mask, ("batch", None)), *vision_inputs)
    out, _ = decode(params, cache, logits, self._put(live, ("batch",)), np.uint32(seed),
                 np.float32(temperature or 1.0), np.float32(top_p), np.int32(max_new_tokens),
                 stops)
    tokens, logprobs, lengths, stopped = jax.device_get(out)
    total = len(prompts) * num_samples
    return Completions(
        tokens=[tokens[r, :lengths[r]].tolist() for r in range(total)],
        logprobs=[logprobs[r, :lengths[r]].tolist() for r in range(total)],
        finish_reason=[STOP if stopped[r] else LENGTH for r in range(total)])


def decode_rules(mesh, rules, logical_axes) -> tuple:
  """The logical-axis rules of the sampler's params ("weights stationary"): every dim that
  a weight pairs with `embed` (vocab, mlp, heads, ...: the tensor-parallel dims, named in
  the model's `logical_axes` tree) split over the rows' mesh axes as well as its own, and
  `embed` whole, so each weight is split over every device but not along embed. Under
  FSDP's layout (embed split over the rows' axes) each decode step gathered every layer's
  weights whole: 35 GB a step on each chip of a v5p-64 for the 27B teacher. In this layout
  a decode step keeps the weights in place and moves the rows' activations ([N, hidden]
  and [N, mlp]: MB a layer); the prefill, whose activations are large, gathers a layer's
  weights as before (along another dim: the same bytes)."""
  rules = sharding_lib.resolve(rules)
  features = {name for axes in jax.tree.leaves(logical_axes,
                                               is_leaf=lambda x: isinstance(x, tuple))
              if "embed" in axes for name in axes if name not in ("embed", "layers")}
  batch = sharding_lib.mesh_axes_of("batch", mesh, rules)
  return tuple(
      (name, None if name == "embed" else
       tuple(dict.fromkeys(batch + sharding_lib.mesh_axes_of(name, mesh, rules)))
       if name in features else target)
      for name, target in rules)


def _check_prompts(prompts, vocab_size):
  if not len(prompts):
    raise ValueError("prompts is empty")
  for i, p in enumerate(prompts):
    if not len(p):
      raise ValueError(f"prompt {i} is empty")
    bad = [t for t in p if not 0 <= int(t) < vocab_size]
    if bad:
      raise ValueError(f"prompt {i} has token ids outside [0, {vocab_size}): {bad[:5]}")


@functools.lru_cache(maxsize=8)
def _shared_sampler(config, mesh):
  return Sampler(config, mesh=mesh)


def generate(config, params, prompts: Sequence[Sequence[int]], *,
             mesh=None, **kwargs) -> Completions:
  """`Sampler.generate` on a sampler shared per (config, mesh), so repeated calls reuse its
  compiled programs. Keyword arguments as `Sampler.generate`."""
  return _shared_sampler(config, mesh).generate(params, prompts, **kwargs)
