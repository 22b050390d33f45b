"""The comparison runner on a reduced run: two methods, one seed, one step; every table and
figure file is written, figures are non-empty images of the stated size, and a rerun skips
the finished runs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from zppo_jax import compare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_run_specs_and_directory_names():
  assert compare.parse_runs("ZPPO=configs/tiny.py,GRPO†=configs/tiny.py:method=grpo,buffer") == [
      ("ZPPO", "configs/tiny.py"), ("GRPO†", "configs/tiny.py:method=grpo,buffer")]
  with pytest.raises(ValueError, match="labels must differ"):
    compare.parse_runs("A=configs/tiny.py,A=configs/zppo.py")
  with pytest.raises(ValueError, match="is not Label=configs/file.py"):
    compare.parse_runs("configs/tiny.py")
  assert compare.slug("GRPO† + teacher response") == "grpo_dagger_teacher_response"
  tiny = compare.paper_runs()
  assert len({compare.slug(label) for label, _ in tiny}) == len(tiny) == 6
  assert tiny[0] == ("Off-policy distill†", "configs/tiny.py:method=off_policy_distill,buffer")
  real = dict(compare.paper_runs("size=0.8b,mesh=tpu_v5p"))
  assert real["ZPPO"] == "configs/zppo.py:size=0.8b,mesh=tpu_v5p"
  assert real["On-policy distill†"] == "configs/on_policy_distill.py:size=0.8b,mesh=tpu_v5p,buffer"
  # every preset is a loadable config with the method it claims
  from zppo_jax import run_config
  for label, spec in list(tiny) + list(real.items()):
    path, _, arg = spec.partition(":")
    config = run_config.config_module(path.removeprefix("configs/")).get_config(arg)
    assert config.buffer.enabled == (label != "GRPO"), label
  assert parse_roundtrip(real) == real


def parse_roundtrip(runs):
  return dict(compare.parse_runs(",".join(f"{label}={spec}" for label, spec in runs.items())))


def test_reduced_comparison_writes_every_table_and_figure(tmp_path):
  workdir = tmp_path / "cmp"
  command = [sys.executable, "-m", "zppo_jax.compare", f"--workdir={workdir}",
             "--runs=ZPPO=configs/tiny.py,GRPO†=configs/tiny.py:method=grpo_buffer",
             "--seeds=0", "--steps=1", "--set=eval.every=1", "--set=eval.k=2",
             "--set=eval.benchmarks=('heldout=synthetic:heldout;limit=6',"
             "'transfer=synthetic:transfer;limit=4')"]
  env = {**os.environ, "PYTHONPATH": REPO}
  first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  assert first.stdout.count("[compare]") == 2
  for name in ("results.md", "summary.json") + compare.FIGURES:
    assert (workdir / name).stat().st_size > 0, name
  for name in compare.FIGURES:
    image = Image.open(workdir / name)
    width, height = (round(s * compare.FIGURE_DPI) for s in compare.FIGURE_SIZE)
    assert image.size == (width, height), name
    pixels = np.asarray(image.convert("L"), np.float32)
    assert pixels.std() > 5, f"{name} is blank"
  table = (workdir / "results.md").read_text()
  for row in ("| Student (start) |", "| ZPPO |", "| GRPO† |"):
    assert row in table
  assert "python -m zppo_jax.compare" in table  # the command that produced it
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["metric"] == "avg@2"
  assert set(summary["final"]) == {"Student (start)", "ZPPO", "GRPO†"}
  for per_seed in summary["final"].values():
    assert 0 <= per_seed["0"]["average"] <= 1
  # the step-0 point of every method is the starting student, evaluated once per seed
  start = json.loads((workdir / "student" / "seed_0" / "eval.json").read_text())
  assert start["benchmarks"]["heldout"]["questions"] == 6
  # a rerun finds both runs finished: it only redraws
  again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
  assert again.returncode == 0 and "[compare]" not in again.stdout
