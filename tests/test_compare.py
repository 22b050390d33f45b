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

from zppo_jax import compare, figures, report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_run_specs_and_directory_names():
  assert compare.parse_runs("ZPPO=configs/tiny.py,GRPO†=configs/tiny.py:method=grpo,buffer") == [
      ("ZPPO", "configs/tiny.py"), ("GRPO†", "configs/tiny.py:method=grpo,buffer")]
  with pytest.raises(ValueError, match="labels must differ"):
    compare.parse_runs("A=configs/tiny.py,A=configs/zppo.py")
  with pytest.raises(ValueError, match="is not Label=configs/file.py"):
    compare.parse_runs("configs/tiny.py")
  assert report.slug("GRPO† + teacher response") == "grpo_dagger_teacher_response"
  tiny = compare.paper_runs()
  assert len({report.slug(label) for label, _ in tiny}) == len(tiny) == 8  # 6 + 2 ablations
  assert dict(tiny)["ZPPO, NCQ only (always)"] == (
      "configs/tiny.py:method=zppo,ncq_only,ncq_always")
  assert len(compare.paper_runs(ablations=False)) == 6
  assert tiny[0] == ("Off-policy distill†", "configs/tiny.py:method=off_policy_distill,buffer")
  real = dict(compare.paper_runs("size=0.8b,mesh=tpu_v5p", ablations=False))
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
             "--seeds=0", "--steps=1", "--jobs=2", "--set=eval.every=1", "--set=eval.k=2",
             "--set=train.optimizer.warmup_steps=0",  # a 1-step cosine schedule
             "--set=eval.benchmarks=('heldout=synthetic:heldout;limit=6',"
             "'transfer=synthetic:transfer;limit=4')"]
  env = {**os.environ, "PYTHONPATH": REPO}
  first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  assert first.stdout.count("[compare]") == 3  # the starting student, then the two runs
  for name in ("results.md", "summary.json") + report.FIGURES:
    assert (workdir / name).stat().st_size > 0, name
  for name in report.FIGURES:
    image = Image.open(workdir / name)
    width, height = (round(s * figures.FIGURE_DPI) for s in figures.FIGURE_SIZE)
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


def _run(final: float, transfer: float, graduated: dict, admitted: dict, kind_rows=()):
  """A run's metrics as the trainer logs them: two steps, the last with the evaluation."""
  step = {"reward/mean": 0.5, "questions/replayed": 3, "buffer/admitted": 2,
          "train/kl_to_start": 0.01, "rollout/entropy": 0.3, "zero_advantage_fraction": 0.25,
          "buffer/graduated_total": sum(graduated.values()),
          **{f"buffer/graduated_total/{b}": n for b, n in graduated.items()},
          **{f"buffer/admitted_total/{b}": n for b, n in admitted.items()}}
  return {"metrics": [{"step": 0, **step},
                      {"step": 1, **step, "eval/heldout/avg@4": final,
                       "eval/transfer/avg@4": transfer,
                       "eval/average/avg@4": (final + transfer) / 2}],
          "reformulations": list(kind_rows)}


def test_results_page_intervals_and_claims():
  """Gains are paired by seed with t intervals; graduation is pooled over seeds with Wilson
  intervals; a claim is marked by its interval: here ZPPO's 0/8 graduation and its gain over
  GRPO† hold, and nothing is claimed from a single seed."""
  seeds = (0, 1, 2)
  student = {s: {"benchmarks": {"heldout": {"avg@4": 0.40 + 0.01 * s},
                                "transfer": {"avg@4": 0.10}}} for s in seeds}
  zppo = {s: _run(0.50 + 0.01 * s + 0.002 * s * s, 0.10, {"0/8": 3}, {"0/8": 10})
          for s in seeds}
  grpo = {s: _run(0.45 + 0.01 * s, 0.10, {"0/8": 0}, {"0/8": 10}) for s in seeds}
  collected = {"runs": {"ZPPO": zppo, "GRPO†": grpo}, "student": student}
  text, summary = report.tables(collected, ["ZPPO", "GRPO†"], seeds, "cmd")
  # ZPPO's average gains over the student per seed: (0.10 + 0.002 s^2) / 2 = 5.0, 5.1, 5.4 pp
  gain = summary["gain"]["ZPPO"]["average"]
  assert gain["mean"] == pytest.approx((0.050 + 0.051 + 0.054) / 3)
  assert gain["seeds_up"] == 3 and gain["low"] > 0.04 and gain["high"] < 0.06
  assert summary["gain"]["ZPPO"]["heldout"]["mean"] == pytest.approx(2 * gain["mean"])
  assert "9/30: 30.0 [16.7, 47.9]" in text  # pooled 0/8 bucket of ZPPO, Wilson 95%
  assert "0/30: 0.0 [0.0, 11.4]" in text
  assert "| 1.5 ± 0.0 |" in text  # revisits per admitted question: 3 replays per 2 admissions
  _, checked = report.claims(collected)
  verdicts = {c["claim"]: c["verdict"] for c in checked}
  assert verdicts["ZPPO graduates more questions admitted at 0/8 than GRPO†"] == "holds"
  assert verdicts["ZPPO gains more held-out accuracy than GRPO†"] == "holds"
  assert verdicts["ZPPO improves held-out accuracy over the starting student"] == "holds"
  one = {"runs": {"ZPPO": {0: zppo[0]}, "GRPO†": {0: grpo[0]}}, "student": {0: student[0]}}
  assert {c["verdict"] for c in report.claims(one)[1] if c["key"] != "0/8"} == {"not shown"}
