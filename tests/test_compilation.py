"""The persistent compilation cache's location, and compile counts from jax.monitoring."""

import os

import jax
import jax.numpy as jnp

from zppo_jax import compilation


def test_cache_location(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compilation.default_cache_dir() == str(tmp_path / "zppo_jax" / "xla")
  # the environment's directory (the test session's, see conftest.py) wins over the config's
  assert compilation.enable_cache("/somewhere/else") == os.environ["JAX_COMPILATION_CACHE_DIR"]
  assert jax.config.jax_compilation_cache_dir == os.environ["JAX_COMPILATION_CACHE_DIR"]


def test_every_program_is_counted_as_compiled_or_loaded():
  before = compilation.COUNTS.metrics()
  f = jax.jit(lambda x: jnp.tanh(x) * 3 - 1)
  f(jnp.ones((3, 7, 11)))
  f(jnp.ones((3, 7, 11)))  # the same shape: no new program
  after = compilation.COUNTS.metrics()
  programs = lambda m: m["compile/count"] + m["compile/cache_hits"]  # noqa: E731
  assert programs(after) - programs(before) >= 1
  assert after["compile/seconds"] > before["compile/seconds"]
  f(jnp.ones((3, 7, 11)))
  assert compilation.COUNTS.metrics() == after
