"""Hugging Face checkpoints in and out: both layouts, shards, meshes, and clear errors."""

import json
import os
import shutil
import stat

import jax
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from flax import traverse_util

from zppo_jax import sharding
from zppo_jax.models import qwen3_5


def _ids(vocab, seed=0):
  return np.random.RandomState(seed).randint(0, vocab, (2, 21))


_forward = jax.jit(qwen3_5.forward, static_argnums=0)  # one jitted program for every test


def _logits(config, params, ids):
  return np.asarray(_forward(config, params, ids))


def _hf(model, ids):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids)).logits.numpy()


def test_multimodal_layout_loads_text_weights(hf_multimodal):
  model, path = hf_multimodal
  config, params = qwen3_5.load_hf_checkpoint(path)
  assert config.layout == "qwen3_5"
  ids = _ids(config.vocab_size)
  np.testing.assert_allclose(_logits(config, params, ids), _hf(model, ids), atol=1e-4, rtol=0)


def test_save_then_transformers_loads_same_logits(hf_text, tmp_path):
  _, path = hf_text
  config, params = qwen3_5.load_hf_checkpoint(path)
  # Change the weights so the test cannot pass by re-reading the source checkpoint.
  params = jax.tree.map(lambda x: x * 1.1, params)
  out = qwen3_5.save_hf_checkpoint(str(tmp_path / "saved"), config, params)
  reloaded = transformers.Qwen3_5ForCausalLM.from_pretrained(out).eval()
  ids = _ids(config.vocab_size, seed=1)
  np.testing.assert_allclose(_hf(reloaded, ids), _logits(config, params, ids), atol=1e-4,
                             rtol=0)


def test_multimodal_save_keeps_vision_and_mtp(hf_multimodal, tmp_path):
  model, path = hf_multimodal
  config, params = qwen3_5.load_hf_checkpoint(path)
  out = qwen3_5.save_hf_checkpoint(str(tmp_path / "mm"), config, params, source=path,
                                   max_shard_bytes=100_000)
  files = sorted(os.listdir(out))
  assert "model.safetensors.index.json" in files and "tokenizer_config.json" in files
  assert len([f for f in files if f.endswith(".safetensors")]) > 2
  weight_map = json.load(open(os.path.join(out, "model.safetensors.index.json")))["weight_map"]
  assert "mtp.fc.weight" in weight_map
  assert any(k.startswith("model.visual.") for k in weight_map)
  reloaded = transformers.Qwen3_5ForConditionalGeneration.from_pretrained(out).eval()
  for name, p in model.state_dict().items():  # vision tower carried over bit for bit
    torch.testing.assert_close(reloaded.state_dict()[name], p, atol=1e-6, rtol=0, msg=name)
  ids = _ids(config.vocab_size, seed=2)
  np.testing.assert_allclose(_hf(reloaded, ids), _hf(model, ids), atol=1e-5, rtol=0)


def test_multimodal_save_without_source_is_text_only(hf_multimodal, tmp_path):
  model, path = hf_multimodal
  config, params = qwen3_5.load_hf_checkpoint(path)
  out = qwen3_5.save_hf_checkpoint(str(tmp_path / "text"), config, params)
  assert json.load(open(os.path.join(out, "config.json")))["model_type"] == "qwen3_5_text"
  reloaded = transformers.Qwen3_5ForCausalLM.from_pretrained(out).eval()
  ids = _ids(config.vocab_size, seed=3)
  np.testing.assert_allclose(_hf(reloaded, ids), _hf(model, ids), atol=1e-5, rtol=0)


def test_multi_shard_checkpoint_loads(hf_text, tmp_path):
  model, path = hf_text
  sharded = tmp_path / "sharded"
  model.save_pretrained(sharded, max_shard_size="20KB")
  assert (sharded / "model.safetensors.index.json").exists()
  config, params = qwen3_5.load_hf_checkpoint(str(sharded))
  _, ref_params = qwen3_5.load_hf_checkpoint(path)
  jax.tree.map(np.testing.assert_array_equal, params, ref_params)
  # the abstract params (what restoring and the memory tool size) are those transformers wrote
  assert jax.tree.map(lambda x: (x.shape, x.dtype), qwen3_5.param_shapes(config)) == \
      jax.tree.map(lambda x: (x.shape, x.dtype), params)


def test_load_onto_mesh_places_shards(hf_text):
  model, path = hf_text
  mesh = sharding.make_mesh((2, 2, 2))
  config, params = qwen3_5.load_hf_checkpoint(path, mesh=mesh)
  _, plain = qwen3_5.load_hf_checkpoint(path)
  flat = traverse_util.flatten_dict(params)
  for key, x in flat.items():
    assert x.sharding.mesh.shape == mesh.shape, key
  # Embedding [vocab, embed]: vocab over "tensor" when it divides, embed over "fsdp".
  embed = flat[("embed",)]
  spec = embed.sharding.spec
  assert spec[1] == "fsdp" and spec[0] == ("tensor" if config.vocab_size % 2 == 0 else None)
  assert embed.addressable_shards[0].data.shape[1] == config.hidden_size // 2
  jax.tree.map(np.testing.assert_array_equal, params, plain)
  ids = _ids(config.vocab_size, seed=4)
  np.testing.assert_allclose(_logits(config, params, ids), _hf(model, ids), atol=1e-4, rtol=0)


# --- errors -----------------------------------------------------------------------------


@pytest.fixture
def broken(hf_text, tmp_path):
  """A writable copy of a checkpoint and a function to rewrite its tensors."""
  _, path = hf_text
  copy = tmp_path / "ckpt"
  shutil.copytree(path, copy)
  file = copy / "model.safetensors"

  def rewrite(edit):
    tensors = safetensors.torch.load_file(file)
    edit(tensors)
    safetensors.torch.save_file(tensors, file, metadata={"format": "pt"})
  return copy, rewrite


def test_missing_key_is_named(broken):
  path, rewrite = broken
  rewrite(lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(qwen3_5.CheckpointError, match=r"missing keys.*layers\.1\.mlp\.up_proj"):
    qwen3_5.load_hf_checkpoint(str(path))


def test_extra_key_is_named(broken):
  path, rewrite = broken
  rewrite(lambda t: t.update({"model.layers.0.surprise.weight": torch.zeros(2)}))
  with pytest.raises(qwen3_5.CheckpointError, match=r"unexpected keys.*surprise"):
    qwen3_5.load_hf_checkpoint(str(path))


def test_wrong_shape_names_key_and_both_shapes(broken):
  path, rewrite = broken
  key = "model.norm.weight"
  rewrite(lambda t: t.update({key: torch.zeros(7)}))
  with pytest.raises(qwen3_5.CheckpointError, match=r"model\.norm\.weight: shape \(7,\).*"
                     r"implies \(\d+,\)"):
    qwen3_5.load_hf_checkpoint(str(path))


def test_unsupported_model_type(broken):
  path, _ = broken
  cfg = json.load(open(path / "config.json"))
  cfg["model_type"] = "llama"
  json.dump(cfg, open(path / "config.json", "w"))
  with pytest.raises(qwen3_5.ConfigError, match=r"config\.json: unsupported model_type 'llama'"):
    qwen3_5.load_hf_checkpoint(str(path))


def test_missing_files(broken, tmp_path):
  path, _ = broken
  with pytest.raises(FileNotFoundError, match="does not exist"):
    qwen3_5.load_hf_checkpoint(str(tmp_path / "nowhere"))
  os.remove(path / "model.safetensors")
  with pytest.raises(FileNotFoundError, match="neither model.safetensors nor"):
    qwen3_5.load_hf_checkpoint(str(path))
  os.remove(path / "config.json")
  with pytest.raises(FileNotFoundError, match="no config.json"):
    qwen3_5.load_hf_checkpoint(str(path))


def test_index_naming_a_missing_shard(hf_text, tmp_path):
  model, _ = hf_text
  model.save_pretrained(tmp_path / "s", max_shard_size="20KB")
  shard = sorted(f for f in os.listdir(tmp_path / "s") if f.endswith(".safetensors"))[-1]
  os.remove(tmp_path / "s" / shard)
  with pytest.raises(FileNotFoundError, match=shard):
    qwen3_5.load_hf_checkpoint(str(tmp_path / "s"))


def test_save_replaces_a_previous_export_whole_and_nothing_else(hf_text, tmp_path):
  _, path = hf_text
  config, params = qwen3_5.load_hf_checkpoint(path)
  target = tmp_path / "out"
  qwen3_5.save_hf_checkpoint(str(target), config, params)
  (target / "stale.safetensors").write_text("old")
  qwen3_5.save_hf_checkpoint(str(target), config, params)  # a previous export: replaced
  assert not (target / "stale.safetensors").exists()
  assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary directories left behind
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE(os.stat(target).st_mode) == 0o777 & ~umask  # not mkdtemp's 0700
  assert all(stat.S_IMODE(os.stat(target / n).st_mode) == 0o666 & ~umask
             for n in os.listdir(target))
  # a folder of other files (a workdir, the source checkpoint) is refused and left untouched
  other = tmp_path / "workdir"
  other.mkdir()
  (other / "metrics.jsonl").write_text("{}\n")
  with pytest.raises(ValueError, match="non-empty directory that no export wrote"):
    qwen3_5.save_hf_checkpoint(str(other), config, params)
  assert os.listdir(other) == ["metrics.jsonl"]
  with pytest.raises(ValueError, match="the checkpoint it was loaded from"):
    qwen3_5.save_hf_checkpoint(path, config, params, source=path)
  (tmp_path / "empty").mkdir()
  qwen3_5.save_hf_checkpoint(str(tmp_path / "empty"), config, params)  # empty: fine


@pytest.mark.parametrize("keep", [0, 5, 1000])
def test_a_truncated_safetensors_file_is_named(broken, keep):
  """A download or copy cut short used to give SafetensorError with no path at all."""
  copy, _ = broken
  file = copy / "model.safetensors"
  file.write_bytes(file.read_bytes()[:keep])
  with pytest.raises(qwen3_5.CheckpointError, match=f"{file} is not a readable safetensors"):
    qwen3_5.load_hf_checkpoint(str(copy))
