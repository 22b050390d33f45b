"""Hugging Face Qwen3.5 checkpoints (config.json + safetensors) in and out.

Loading reads each device's shard of each parameter straight from the safetensors files
(lazy slices of memory-mapped files) into `jax.make_array_from_callback`, so the host never
holds more than one parameter stack at a time and never a second copy of the model.
Saving streams one layer's tensor at a time into safetensors shards of bounded size, in a
temporary directory renamed into place at the end, so a crash never leaves a half-written
checkpoint under the target name.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util
from jax.experimental import multihost_utils
from safetensors import safe_open
from safetensors.numpy import save_file

from zppo_jax.models.qwen3_5 import config as config_lib
from zppo_jax.models.qwen3_5 import params as param_tables
from zppo_jax.models.qwen3_5 import vision as vision_lib
from zppo_jax.models.qwen3_5.config import Qwen3_5Config
from zppo_jax.models.qwen3_5.params import ParamSpec, param_specs

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
TEXT_PREFIXES = {config_lib.TEXT_MODEL_TYPE: "model.",
                 config_lib.MULTIMODAL_MODEL_TYPE: "model.language_model."}
# Tensors of a Qwen3.5 repository that the text model does not use (vision tower,
# multi-token-prediction head): skipped on load, carried over on save when a source is given.
VISION_PREFIX = "model.visual."
NON_TEXT_PREFIXES = (VISION_PREFIX, "mtp.")


class CheckpointError(ValueError):
  """A checkpoint whose tensors do not match its config."""


def _tensor_files(path: str) -> dict[str, str]:
  """Maps each tensor name to the safetensors file (full path) that holds it."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"checkpoint directory {path} does not exist")
  index = os.path.join(path, INDEX_FILE)
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict):
      raise CheckpointError(f"{index}: no 'weight_map' object")
    files = {k: os.path.join(path, v) for k, v in weight_map.items()}
    for file in sorted(set(files.values())):
      if not os.path.exists(file):
        raise FileNotFoundError(f"{index} lists {os.path.basename(file)}, which is missing")
    return files
  single = os.path.join(path, SINGLE_FILE)
  if not os.path.exists(single):
    raise FileNotFoundError(f"{path} has neither {SINGLE_FILE} nor {INDEX_FILE}")
  with _safe_open(single, "numpy") as f:
    return {k: single for k in f.keys()}


def _safe_open(file: str, framework: str):
  """safe_open, with a damaged file (truncated, not safetensors) named in the error."""
  try:
    return safe_open(file, framework)
  except Exception as e:  # safetensors' SafetensorError, OSError, ...
    raise CheckpointError(f"{file} is not a readable safetensors file ({type(e).__name__}: "
                          f"{e}); a download or copy cut short?") from None


@contextlib.contextmanager
def _open_all(files):
  """safe_open handles (jax framework, on the host CPU) for every file, closed at exit."""
  with contextlib.ExitStack() as stack:
    yield {file: stack.enter_context(_safe_open(file, "flax")) for file in sorted(set(files))}


def _expected(config: Qwen3_5Config, prefix: str, specs=None
              ) -> dict[str, tuple[ParamSpec, int | None]]:
  """HF key -> (spec, layer index) of a parameter table (the text model's, or another's
  whose `config` holds its layer_types)."""
  out = {}
  for spec in param_specs(config) if specs is None else specs:
    full = spec.hf_name if spec.path == ("lm_head",) else prefix + spec.hf_name
    if spec.layer_type is None:
      out[full] = (spec, None)
    else:
      for i in spec.layer_indices(config):
        out[full.format(i=i)] = (spec, i)
  return out


def _check(path, config, expected, files, handles):
  loaded = tuple(p for p in NON_TEXT_PREFIXES if any(k.startswith(p) for k in expected))
  missing = sorted(set(expected) - set(files))
  extra = sorted(k for k in set(files) - set(expected)
                 if not k.startswith(tuple(set(NON_TEXT_PREFIXES) - set(loaded)))
                 and not (k == "lm_head.weight" and config.tie_word_embeddings))
  problems = []
  if missing:
    problems.append(f"missing keys ({len(missing)}): {missing[:8]}")
  if extra:
    problems.append(f"unexpected keys ({len(extra)}): {extra[:8]}")
  for key in sorted(set(expected) & set(files)):
    found = tuple(handles[files[key]].get_slice(key).get_shape())
    want = expected[key][0].hf_shape()
    if expected[key][0].hf_layout == "conv3d":  # compared as [D, C·T·P·P]
      found = (found[0], int(np.prod(found[1:]))) if found else found
    if found != want:
      problems.append(f"{key}: shape {found} in {os.path.basename(files[key])}, "
                      f"config.json implies {want}")
  if problems:
    raise CheckpointError(f"{path} does not match its config.json:\n  " + "\n  ".join(problems))


def _read(handle, key: str, spec: ParamSpec, index: tuple[slice, ...], dtype) -> np.ndarray:
  """Reads the [index] block of one layer's tensor, in our [in, out] orientation."""
  tensor = handle.get_slice(key)
  if spec.hf_layout == "linear":
    block = tensor[index[1], index[0]].T
  elif spec.hf_layout == "conv":
    block = tensor[index[1], 0:1, index[0]][:, 0, :].T
  elif spec.hf_layout == "conv3d":  # [D, C, T, P, P] -> [C·T·P·P, D] (a small kernel: read whole)
    whole = np.asarray(tensor[:])
    block = whole.reshape(whole.shape[0], -1).T[index]
  else:
    block = tensor[index]
  return np.asarray(block).astype(dtype)


def load_hf_checkpoint(path: str, dtype=jnp.float32, mesh=None,
                       rules=None, *, vision: bool = False, text: bool = True
                       ) -> tuple[Qwen3_5Config, dict]:
  """Loads a Qwen3.5 text model (and with `vision`, its vision tower as params["visual"])
  from a Hugging Face checkpoint directory.

  Args:
    path: directory with config.json and model.safetensors or sharded safetensors plus
      model.safetensors.index.json; text-only or multimodal layout (vision and MTP tensors
      are skipped).
    dtype: parameter dtype (e.g. jnp.float32, jnp.bfloat16).
    mesh: optional `jax.sharding.Mesh`; each array is created directly with its sharding from
      the logical-axis `rules`, each host reading only its own shards.
    vision: also load `model.visual.*` (multimodal repositories), sharded by the same rules.
    text: load the text model (False with `vision`: the tower alone, as {"visual": ...}).
  Returns:
    (config, params), params a nested dict of jax.Arrays.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f"checkpoint directory {path} does not exist")
  config = config_lib.load(path)
  files = _tensor_files(path)
  prefix = TEXT_PREFIXES[config_lib.MULTIMODAL_MODEL_TYPE] if any(
      k.startswith(TEXT_PREFIXES[config_lib.MULTIMODAL_MODEL_TYPE]) for k in files
  ) else TEXT_PREFIXES[config_lib.TEXT_MODEL_TYPE]
  text_table = (param_specs(config), config, _expected(config, prefix), ())
  tables = [text_table] if text else []
  if vision:
    if config.vision is None:
      raise CheckpointError(f"{path}: vision=True, but its config.json has no vision_config")
    specs = vision_lib.param_specs(config.vision)
    tables.append((specs, config.vision, _expected(config.vision, VISION_PREFIX, specs),
                   ("visual",)))
  np_dtype = np.dtype(dtype)
  with _open_all(files.values()) as handles, _on_host():
    # the file is checked whole (the text tensors too when only the tower is read)
    checked = tables if text else [text_table] + tables
    _check(path, config, {k: v for _, _, e, _ in checked for k, v in e.items()}, files, handles)
    flat = {}
    for specs, table_config, expected, root in tables:
      targets = None if mesh is None else traverse_util.flatten_dict(
          param_tables.table_shardings(specs, table_config, mesh, rules))
      arrays = _arrays(specs, table_config, expected, files, handles, targets, np_dtype)
      flat.update({root + name: array for name, array in arrays.items()})
  return config, traverse_util.unflatten_dict(flat)


def _arrays(specs, config, expected, files, handles, targets, np_dtype) -> dict:
  """path -> jax.Array of each spec, each device's block read lazily from the safetensors."""
  by_spec: dict[tuple[str, ...], dict[int | None, str]] = {}
  for key, (spec, layer) in expected.items():
    by_spec.setdefault(spec.path, {})[layer] = key
  flat = {}
  for spec in specs:
    shape = spec.stacked_shape(config)
    target = (jax.sharding.SingleDeviceSharding(jax.devices()[0]) if targets is None
              else targets[spec.path])
    keys = by_spec.get(spec.path, {})

    def callback(index, spec=spec, keys=keys, shape=shape):
      index = tuple(index) + (slice(None),) * (len(shape) - len(index))
      if spec.layer_type is None:
        key = keys[None]
        return _read(handles[files[key]], key, spec, index, np_dtype)
      blocks = [_read(handles[files[keys[i]]], keys[i], spec, index[1:], np_dtype)
                for i in spec.layer_indices(config)[index[0]]]
      if not blocks:  # no layer of this type in the model
        return np.zeros((0,) + tuple(len(range(*s.indices(n)))
                                     for s, n in zip(index[1:], spec.shape)), np_dtype)
      return np.stack(blocks)

    flat[spec.path] = jax.make_array_from_callback(shape, target, callback)
  return flat


def _on_host():
  """Reads materialise on the host CPU, not on accelerator 0 (unless JAX_PLATFORMS hides it)."""
  try:
    return jax.default_device(jax.local_devices(backend="cpu")[0])
  except RuntimeError:
    return contextlib.nullcontext()


def _to_host(x) -> np.ndarray:
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _hf_tensors(config: Qwen3_5Config, params, prefix: str):
  """Yields (name, array in HF orientation), one layer at a time."""
  flat = traverse_util.flatten_dict(params)
  for spec in param_specs(config):
    if spec.path not in flat:
      raise CheckpointError(f"params has no {'/'.join(spec.path)}")
    value = flat[spec.path]
    name = spec.hf_name if spec.path == ("lm_head",) else prefix + spec.hf_name
    items = ([(name, value)] if spec.layer_type is None else
             [(name.format(i=i), value[j]) for j, i in enumerate(spec.layer_indices(config))])
    for key, array in items:
      array = _to_host(array)
      if array.shape != spec.shape:
        raise CheckpointError(f"{'/'.join(spec.path)}: shape {array.shape}, config implies "
                              f"{spec.shape}")
      if spec.hf_layout == "linear":
        array = array.T
      elif spec.hf_layout == "conv":
        array = array.T[:, None, :]
      yield key, np.ascontiguousarray(array)


def _vision_tensors(config: Qwen3_5Config, params):
  """Yields (model.visual.<name>, array in HF orientation) of params["visual"]."""
  vision = config.vision
  flat = traverse_util.flatten_dict(params["visual"])
  for spec in vision_lib.param_specs(vision):
    value = flat[spec.path]
    items = ([(spec.hf_name, value)] if spec.layer_type is None else
             [(spec.hf_name.format(i=i), value[i]) for i in range(vision.depth)])
    for name, array in items:
      array = _to_host(array)
      if spec.hf_layout == "linear":
        array = array.T
      elif spec.hf_layout == "conv3d":
        array = array.T.reshape(vision.hidden_size, vision.in_channels,
                                vision.temporal_patch_size, vision.patch_size,
                                vision.patch_size)
      yield VISION_PREFIX + name, np.ascontiguousarray(array)


def _extra_tensors(source: str, skip: tuple[str, ...] = ()):
  """Yields the non-text tensors (vision tower, MTP head) of a source checkpoint, but those
  under the `skip` prefixes."""
  files = _tensor_files(source)
  with _open_all(files.values()) as handles:
    for key in sorted(files):
      if key.startswith(NON_TEXT_PREFIXES) and not (skip and key.startswith(skip)):
        yield key, np.asarray(handles[files[key]].get_tensor(key))


def save_hf_checkpoint(path: str, config: Qwen3_5Config, params, *, source: str | None = None,
                       max_shard_bytes: int = 4 * 2**30) -> str:
  """Writes params as a Hugging Face checkpoint that `transformers` and servers load.

  Args:
    path: target directory: new, empty, or a previous export (it holds EXPORT_MARKER), which
      is replaced whole once the new one is written; any other directory is refused, so an
      export never destroys a workdir or a folder of other files.
    source: the checkpoint the model was loaded from. Its tokenizer/generation files and,
      for the multimodal layout, its vision and MTP tensors are copied, so the result is a
      complete repository. A vision tower in `params["visual"]` (trained or not) is written
      from the params instead. Without a source or a tower a multimodal config is saved as
      the text-only `Qwen3_5ForCausalLM` layout (a vision tower cannot be made up).
    max_shard_bytes: safetensors files are split at this size, with an index.
  Returns:
    path.
  """
  _check_export_target(path, source)
  with_vision = "visual" in params
  if with_vision and config.layout != config_lib.MULTIMODAL_MODEL_TYPE:
    raise CheckpointError("params hold a vision tower, but the config is text-only")
  if config.layout == config_lib.MULTIMODAL_MODEL_TYPE and source is None and not with_vision:
    logging.warning("no source checkpoint given: saving %s in the text-only qwen3_5_text "
                    "layout (the vision tower is not part of these params)", path)
    config = config.replace(layout=config_lib.TEXT_MODEL_TYPE)
  prefix = TEXT_PREFIXES[config.layout]
  dtype = params["embed"].dtype
  hf_config = config_lib.to_hf_dict(config)
  hf_config["dtype"] = jnp.dtype(dtype).name
  if "text_config" in hf_config:
    hf_config["text_config"]["dtype"] = jnp.dtype(dtype).name

  tensors = _hf_tensors(config, params, prefix)
  if with_vision:  # the params' tower, trained or not
    tensors = itertools.chain(tensors, _vision_tensors(config, params))
  if source is not None and config.layout == config_lib.MULTIMODAL_MODEL_TYPE:
    tensors = itertools.chain(tensors, _extra_tensors(
        source, skip=(VISION_PREFIX,) if with_vision else ()))
  if jax.process_index() != 0:  # every process joins the gathers; one writes
    for _ in tensors:
      pass
    return path

  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(path) + ".tmp-", dir=parent)
  try:
    shard_names = _write_shards(tmp, tensors, max_shard_bytes)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_config, f, indent=2, sort_keys=True)
    if source is not None:
      for name in sorted(os.listdir(source)):
        full = os.path.join(source, name)
        if (os.path.isfile(full) and not name.endswith(".safetensors")
            and name not in (INDEX_FILE, "config.json")):
          shutil.copy2(full, os.path.join(tmp, name))
    with open(os.path.join(tmp, EXPORT_MARKER), "w") as f:
      json.dump({"exported_by": "zppo_jax", "source": source}, f)
    _ordinary_permissions(tmp)
    _replace_dir(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  logging.info("saved %s (%d safetensors files)", path, len(shard_names))
  return path


EXPORT_MARKER = ".zppo_export"


def _check_export_target(path: str, source: str | None):
  """Refuses a target that is neither new, nor empty, nor a previous export."""
  if source is not None and os.path.exists(path) and os.path.samefile(path, source):
    raise ValueError(f"export target {path} is the checkpoint it was loaded from; export "
                     "elsewhere")
  if os.path.isfile(path):
    raise ValueError(f"export target {path} is a file, not a directory")
  if os.path.isdir(path) and os.listdir(path) and not os.path.isfile(
      os.path.join(path, EXPORT_MARKER)):
    raise ValueError(f"export target {path} is a non-empty directory that no export wrote "
                     f"(no {EXPORT_MARKER}): refusing to replace it. Export to a new or empty "
                     "directory")


def _ordinary_permissions(directory: str):
  """rwx for all but the umask (mkdtemp makes 0700 folders): an export others can read."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(directory, 0o777 & ~umask)
  for name in os.listdir(directory):
    os.chmod(os.path.join(directory, name), 0o666 & ~umask)


def _write_shards(directory: str, tensors, max_shard_bytes: int) -> list[str]:
  """Writes tensors into shards of at most max_shard_bytes (one tensor may exceed it)."""
  shards: list[list[str]] = []
  written: list[str] = []
  current: dict[str, np.ndarray] = {}
  size = 0

  def flush():
    nonlocal current, size
    if current:
      name = f"part-{len(written):05d}.safetensors"
      save_file(current, os.path.join(directory, name), metadata={"format": "pt"})
      written.append(name)
      shards.append(list(current))
      current, size = {}, 0

  for key, array in tensors:
    if current and size + array.nbytes > max_shard_bytes:
      flush()
    current[key] = array
    size += array.nbytes
  flush()
  if len(written) == 1:
    os.rename(os.path.join(directory, written[0]), os.path.join(directory, SINGLE_FILE))
    return [SINGLE_FILE]
  names = [f"model-{i + 1:05d}-of-{len(written):05d}.safetensors" for i in range(len(written))]
  weight_map = {}
  for old, new, keys in zip(written, names, shards):
    os.rename(os.path.join(directory, old), os.path.join(directory, new))
    weight_map.update({k: new for k in keys})
  total = sum(os.path.getsize(os.path.join(directory, n)) for n in names)
  with open(os.path.join(directory, INDEX_FILE), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2,
              sort_keys=True)
  return names


def _replace_dir(new: str, path: str):
  """Moves `new` to `path`; an existing `path` is kept until the new one is in place."""
  if not os.path.exists(path):
    os.rename(new, path)
    return
  old = tempfile.mkdtemp(prefix=os.path.basename(path) + ".old-",
                         dir=os.path.dirname(os.path.abspath(path)))
  os.rmdir(old)
  os.rename(path, old)
  os.rename(new, path)
  shutil.rmtree(old)
