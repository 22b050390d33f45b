"""launch/ scripts: the commands they would run (--dry-run), the SLURM script run under fake
`srun`/`scontrol`/`python` and clean under shellcheck, what no argument may add to it, a TPU
worker's run and stop in a local shell; the memory tool's arithmetic."""

import os
import shlex
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from zppo_jax import memory, run_config
from zppo_jax.models import qwen3_5

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
SHELLCHECK = shutil.which("shellcheck", path=os.path.dirname(sys.executable)) or "shellcheck"


def _dry(script, *args, cwd=REPO) -> list[list[str]]:
  """The commands a launcher prints (`+ cmd`), parsed back into argv lists."""
  out = subprocess.run([sys.executable, os.path.join(LAUNCH, script), "--dry-run", *args],
                       capture_output=True, text=True, check=True, cwd=cwd)
  return [shlex.split(line[2:]) for line in out.stdout.splitlines() if line.startswith("+ ")]


TPU = ["--name", "zppo", "--zone", "us-east5-a"]


def test_tpu_create_setup_run_logs_stop_delete():
  [create] = _dry("tpu.py", "create", *TPU, "--accelerator", "v5p-32", "--spot")
  assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "zppo", "--zone=us-east5-a",
                    "--accelerator-type=v5p-32", "--version=v2-alpha-tpuv5", "--spot"]
  [queued] = _dry("tpu.py", "create", *TPU, "--accelerator", "v6e-16", "--queued",
                  "--project", "p")
  assert queued[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
  assert {"--node-id=zppo", "--project=p", "--runtime-version=v2-alpha-tpuv6e"} <= set(queued)

  archive, scp, install = _dry("tpu.py", "setup", *TPU)
  assert archive[:3] == ["git", "-C", REPO] and "HEAD" in archive
  assert scp[4] == "scp" and "--worker=all" in scp
  assert "--worker=all" in install and "'jax[tpu]'" in install[-1]
  assert "pip install -q -r requirements.txt" in install[-1]

  train = ["--config", "configs/zppo.py:size=2b,mesh=tpu_v5p", "--workdir", "/tmp/z z",
           "--config.checkpoint.dir=gs://b/run"]
  [run] = _dry("tpu.py", "run", *TPU, "--", *train)
  assert run[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "zppo"]
  assert "--worker=all" in run
  remote = run[-1].removeprefix("--command=")
  # the remote shell gets back exactly the trainer's arguments
  started = remote.split("zppo_jax.train ", 1)[1].split(" > ")[0]
  assert shlex.split(started) == train
  assert "cd ~/zppo_jax && { setsid nohup ~/venv/bin/python -m zppo_jax.train" in remote

  [compare] = _dry("tpu.py", "run", *TPU, "--module", "compare", "--", "--workdir", "/mnt/c")
  assert "python -m zppo_jax.compare --workdir /mnt/c > " in compare[-1]

  [logs] = _dry("tpu.py", "logs", *TPU, "--worker", "3")
  assert "--worker=3" in logs and logs[-1].startswith("--command=tail")
  [stop] = _dry("tpu.py", "stop", *TPU)
  assert stop[:6] == run[:6] and "--worker=all" in stop
  [delete] = _dry("tpu.py", "delete", *TPU, "--queued")
  assert delete[3:6] == ["queued-resources", "delete", "zppo"] and "--quiet" in delete
  for cmd in (install, run, compare, logs, stop):  # what the workers' shells run parses as bash
    remote = cmd[-1].removeprefix("--command=")
    assert subprocess.run(["bash", "-n", "-c", remote]).returncode == 0, remote


def test_tpu_errors_name_the_argument():
  bad = subprocess.run([sys.executable, os.path.join(LAUNCH, "tpu.py"), "create", *TPU,
                        "--accelerator", "v9x-8", "--dry-run"], capture_output=True, text=True)
  assert bad.returncode != 0 and "unknown TPU generation 'v9x'" in bad.stderr
  bad = subprocess.run([sys.executable, os.path.join(LAUNCH, "tpu.py"), "run", *TPU,
                        "--dry-run"], capture_output=True, text=True)
  assert bad.returncode != 0 and "give the trainer's arguments after --" in bad.stderr


# The worker's `python`: prints when it starts and when SIGTERM reaches it; as
# `zppo_jax.compare` it runs a `zppo_jax.train` child, then ends, like compare.py.
FAKE_PYTHON = f"""#!{sys.executable}
import signal, subprocess, sys, time
module = sys.argv[2]
def stopped(*_):
  print(module, "got SIGTERM", flush=True)
  sys.exit(0)
signal.signal(signal.SIGTERM, stopped)
if module == "zppo_jax.compare":
  subprocess.run([sys.argv[0], "-m", "zppo_jax.train"], check=False)
  print(module, "ended", flush=True)
else:
  print(module, "ready", flush=True)
  time.sleep(30)
"""


def _log_until(path, last: str) -> list[str]:
  """The lines of `path` once its last line is `last` (10 s at most)."""
  deadline = time.time() + 10
  lines = []
  while time.time() < deadline and lines[-1:] != [last]:
    time.sleep(0.05)
    lines = path.read_text().splitlines() if path.exists() else []
  return lines


@pytest.mark.parametrize("module", ["train", "compare"])
def test_tpu_stop_signals_the_recorded_run_only(tmp_path, module):
  [run] = _dry("tpu.py", "run", *TPU, "--module", module, "--", "--workdir", "/tmp/z")
  [stop] = _dry("tpu.py", "stop", *TPU)
  run, stop = run[-1].removeprefix("--command="), stop[-1].removeprefix("--command=")
  assert "~/zppo_run.pid" in run and "~/zppo_run.pid" in stop  # the run's id, where stop reads it
  for name, command in (("run", run), ("stop", stop)):
    (tmp_path / name).write_text(command + "\n")
    lint = subprocess.run([SHELLCHECK, "-s", "bash", str(tmp_path / name)], capture_output=True,
                          text=True)
    assert lint.returncode == 0, lint.stdout

  # The worker, in a local shell: its home is tmp_path.
  (tmp_path / "zppo_jax").mkdir()
  (tmp_path / "venv" / "bin").mkdir(parents=True)
  python = tmp_path / "venv" / "bin" / "python"
  python.write_text(FAKE_PYTHON)
  python.chmod(0o755)
  env = {**os.environ, "HOME": str(tmp_path)}
  log = tmp_path / "zppo_run.log"

  def shell(command):
    return subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)

  # no run yet: nothing to stop, and that is no failure
  nothing = shell(stop)
  assert nothing.returncode == 0 and "no live run in ~/zppo_run.pid" in nothing.stdout
  # a process that merely mentions the trainer (an editor, a `tail` of its log) is left alone
  bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                                "tail zppo_jax.train.log"])
  try:
    assert shell(run).returncode == 0
    assert _log_until(log, "zppo_jax.train ready") == ["zppo_jax.train ready"]
    pid = int((tmp_path / "zppo_run.pid").read_text())
    with open(f"/proc/{pid}/cmdline") as f:  # $! was the trainer itself
      assert f"zppo_jax.{module}" in f.read()
    again = shell(run)  # one run per worker: the recorded one stays the one `stop` signals
    assert again.returncode == 1 and f"run {pid} (~/zppo_run.pid) is still running" in again.stderr
    assert int((tmp_path / "zppo_run.pid").read_text()) == pid

    stopped = shell(stop)
    assert stopped.returncode == 0, stopped.stderr  # (`pkill -f` signalled this very shell)
    if module == "compare":  # its training child checkpoints; the comparison then ends
      assert f"SIGTERM to the current run of comparison {pid}" in stopped.stdout
      assert _log_until(log, "zppo_jax.compare ended") == [
          "zppo_jax.train ready", "zppo_jax.train got SIGTERM", "zppo_jax.compare ended"]
    else:
      assert f"SIGTERM to run {pid}" in stopped.stdout
      assert _log_until(log, "zppo_jax.train got SIGTERM") == [
          "zppo_jax.train ready", "zppo_jax.train got SIGTERM"]
    assert bystander.poll() is None
    ended = shell(stop)  # the recorded run has ended
    assert ended.returncode == 0 and "no live run in ~/zppo_run.pid" in ended.stdout
  finally:
    bystander.kill()
    bystander.wait()


def _fake_bin(directory, name, body):
  path = os.path.join(directory, name)
  with open(path, "w") as f:
    f.write("#!/usr/bin/env bash\n" + body + "\n")
  os.chmod(path, 0o755)


def test_slurm_script_gives_each_task_its_flags_and_passes_shellcheck(tmp_path):
  train = ["--config", "configs/zppo.py:size=9b,mesh=gpu_8xh100", "--workdir", "/shared/it's",
           "--config.mesh.shape=(2,8,1)"]
  out = subprocess.run([sys.executable, os.path.join(LAUNCH, "slurm.py"), "--nodes", "2",
                        "--partition", "gpu", "--venv", str(tmp_path / "venv"), "--repo",
                        str(tmp_path), "--script", str(tmp_path / "job.sbatch"), "--dry-run",
                        "--", *train], capture_output=True, text=True, check=True).stdout
  assert out.splitlines()[-1] == f"+ sbatch {tmp_path / 'job.sbatch'}"
  assert not os.path.exists(tmp_path / "job.sbatch")  # dry run: nothing written
  text = "\n".join(out.splitlines()[1:-1]) + "\n"
  assert "#SBATCH --nodes=2" in text and "#SBATCH --signal=TERM@300" in text
  script = tmp_path / "job.sbatch"
  script.write_text(text)

  lint = subprocess.run([SHELLCHECK, str(script)], capture_output=True, text=True)
  assert lint.returncode == 0, lint.stdout

  # Run it on a fake cluster: scontrol lists two nodes, srun starts task 1, python echoes.
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (tmp_path / "venv" / "bin").mkdir(parents=True)
  (tmp_path / "venv" / "bin" / "activate").write_text("")
  _fake_bin(bin_dir, "scontrol", "printf 'node-a\\nnode-b\\n'")
  _fake_bin(bin_dir, "srun", 'shift; SLURM_PROCID=1 "$@"')
  _fake_bin(bin_dir, "python", 'printf "%s\\n" "$@"')
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_NTASKS": "2",
         "SLURM_JOB_NODELIST": "node-[a-b]"}
  argv = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True,
                        env=env).stdout.splitlines()
  assert argv == ["-m", "zppo_jax.train", *train, "--coordinator_address=node-a:12321",
                  "--num_processes=2", "--process_id=1"]


def _slurm(*args):
  return subprocess.run([sys.executable, os.path.join(LAUNCH, "slurm.py"), "--dry-run", *args],
                        capture_output=True, text=True)


def test_slurm_rejects_lines_and_bad_numbers_naming_the_flag():
  hostile = 'x\nrm -rf "$HOME" #'
  cases = [(flag, hostile, r"contains the non-printable character '\n'")
           for flag in ("--job-name", "--time", "--output", "--partition", "--account", "--repo",
                        "--venv")]
  cases += [("--job-name", "a\rb", r"non-printable character '\r'"),
            ("--account", "a\x1b[2Kb", r"non-printable character '\x1b'"),
            ("--nodes", "0", "must be >= 1, got 0"), ("--nodes", "-2", "must be >= 1, got -2"),
            ("--gpus-per-node", "-1", "must be >= 0, got -1"),
            ("--cpus-per-task", "0", "must be >= 1, got 0"),
            ("--cpus-per-task", "-4", "must be >= 1, got -4"),
            ("--grace", "-1", "must be in 0..65535, got -1"),
            ("--grace", "70000", "must be in 0..65535, got 70000"),
            ("--port", "99999999", "must be in 1..65535, got 99999999"),
            ("--port", "0", "must be in 1..65535, got 0"),
            ("--port", "12e3", "invalid integer value: '12e3'")]
  for flag, value, error in cases:
    args = [] if flag == "--nodes" else ["--nodes", "1"]
    bad = _slurm(*args, flag, value, "--", "--workdir", "/w")
    assert bad.returncode == 2 and not bad.stdout, (flag, value)
    message = bad.stderr.splitlines()[-1]
    assert message.startswith(f"slurm.py: error: argument {flag}: ") and message.endswith(error)
  bad = _slurm("--nodes", "1", "--", "--workdir", hostile)
  assert bad.returncode == 2 and bad.stderr.splitlines()[-1] == (
      "slurm.py: error: trainer argument (after --): 'x\\nrm -rf \"$HOME\" #' contains the "
      "non-printable character '\\n'")
  assert _slurm("--nodes", "1", "--gpus-per-node", "0", "--grace", "0", "--port", "65535",
                "--", "--workdir", "/w").returncode == 0  # the bounds themselves are fine


def test_slurm_directive_values_add_no_option():
  values = {"job-name": "a --account=other", "output": "/shared/my runs/#1 \"q\" 'x' \\y-%j.log",
            "time": "1-00:00:00"}
  out = _slurm("--nodes", "1", *[a for k, v in values.items() for a in (f"--{k}", v)], "--",
               "--workdir", "/w")
  assert out.returncode == 0, out.stderr
  # sbatch splits a directive like a shell: whitespace, quotes, backslashes, `#` comments
  options = [shlex.split(line.removeprefix("#SBATCH"), comments=True)
             for line in out.stdout.splitlines() if line.startswith("#SBATCH")]
  assert all(len(o) == 1 for o in options), options
  assert {o[0].split("=", 1)[0] for o in options} == {
      "--job-name", "--nodes", "--ntasks-per-node", "--gpus-per-node", "--cpus-per-task",
      "--time", "--output", "--signal"}
  for key, value in values.items():
    assert [f"--{key}={value}"] in options


# ---------------------------------------------------------------------------- memory tool

def test_memory_estimate_divides_by_the_mesh():
  c = run_config.config_module("tiny.py").get_config()
  c.mesh.shape = (1, -1, 1)
  one = memory.estimate(c, 1)
  four = memory.estimate(c, 4)
  student = memory.model_config("qwen3_5", c.student.path, None, "student")
  params = jax.eval_shape(lambda: qwen3_5.init_params(student, jax.random.key(0), jnp.float32))
  n = sum(x.size for x in jax.tree.leaves(params))
  assert one["student params"] == 4 * n                       # float32, one device
  assert 0 <= one["optimizer state"] - 2 * one["student params"] <= 64  # AdamW: 2 moments, a count
  assert four["student params"] < one["student params"]       # FSDP splits what divides
  # rows split 4 ways; the cache's 4-byte write index is on every device
  call = lambda parts: parts["rollout cache (original)"] - 4
  assert call(one) == 4 * call(four) > 0
  # the sampler's copy in the compute dtype, split over the devices in its own layout
  copy = "sampling copy (compute dtype)"
  assert one[copy] == n * jnp.dtype(c.train.compute_dtype).itemsize
  assert one[copy] / 4 <= four[copy] < one[copy]
  assert "teacher params" in one
  # a chunk's 16 rows split 4 ways: a quarter of the train step's activations a device
  assert one["train step activations"] == 4 * four["train step activations"] > 0
  # one phase at a time: a sampler call (its cache and its prefill), or the update
  phases = memory.phases(one)
  assert phases["BCQ/NCQ rollouts"] == (one["rollout cache (BCQ/NCQ)"]
                                        + one["prefill activations (BCQ/NCQ)"])
  assert memory.peak(one) == (sum(v for k, v in one.items() if k not in memory.PHASES)
                              + max(phases.values()))
  with pytest.raises(ValueError, match=r"mesh shape \[1, 4, -1\] does not divide 6 devices"):
    memory.abstract_mesh((1, 4, -1), 6)


def test_train_step_activations_hand_counted():
  """`activations.train_step` for a 2-layer pattern (one Gated DeltaNet layer, one full
  attention layer), counted by hand from its docstring: with full remat, the blocks' saved
  inputs plus the larger of one block's backward and the head's loop; without, every
  block's working set plus the head's."""
  config = qwen3_5.from_hf_dict(dict(
      model_type="qwen3_5_text", vocab_size=1000, hidden_size=64, intermediate_size=96,
      num_hidden_layers=4, layer_types=["linear_attention", "full_attention"] * 2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=16, linear_conv_kernel_dim=4,
      linear_key_head_dim=16, linear_value_head_dim=8, linear_num_key_heads=2,
      linear_num_value_heads=4))
  rows, length, c = 2, 100, 2   # bfloat16
  count = lambda remat, chunk=8: qwen3_5.activations.train_step(
      config, rows, length, compute_dtype=jnp.bfloat16, remat=remat, delta_chunk=32,
      logprob_chunk=chunk)
  tokens = rows * length
  states = rows * 4 * 4 * 16 * 8 * 4           # ceil(100 / 32) = 4 chunks, float32
  # a token: 2 layers x (3.5 MLP [96] + 5.25 [64]) tensors, and the Gated DeltaNet layer's
  # 7/3 [conv_dim = 2 * 32 + 32] ones, 19/3 float32 and 14/3 bfloat16 [H_v * d_v = 32] ones
  per_token = 2 * (3.5 * 96 + 5.25 * 64) * c + 7 / 3 * 96 * c + 32 * (19 / 3 * 4 + 14 / 3 * c)
  block = int(tokens * per_token) + states
  saved = 2 * tokens * 64 * c                   # 2 blocks' inputs
  head = tokens * 64 * 4 + 3 * rows * 8 * 1000 * 4
  assert block > head
  assert count("full") == saved + block
  assert count("none") == count("dots") == 2 * block + head
  big_head = tokens * 64 * 4 + 3 * rows * 64 * 1000 * 4   # 64-token logit chunks
  assert big_head > block and count("full", chunk=64) == saved + big_head


def test_memory_real_sizes_from_official_shapes():
  c = run_config.method_config("zppo", "size=2b,mesh=tpu_v5p")
  parts = memory.estimate(c, 64, student_size="2b", teacher_size="27b")
  for part, size, dtype_bytes in (("teacher params", "27b", 2), ("student params", "2b", 4)):
    n = qwen3_5.param_count(memory.model_config("qwen3_5", "", size, ""))
    assert parts[part] == pytest.approx(n * dtype_bytes / 64, rel=0.02)  # FSDP over 64
  # on a TPU, the decode loops' copies of weights whose split features are not a multiple
  # of 128 lanes (6144 / 64 = 96 for the 2B's MLP), in each of the student's sampling phases
  tpu = memory.estimate(c, 64, student_size="2b", teacher_size="27b", platform="tpu_v5p")
  copies = tpu["relaid-out weights (student decode, TPU)"]
  assert copies > 0 and "relaid-out weights (student decode, TPU)" not in parts
  for phase in ("student rollouts", "BCQ/NCQ rollouts"):
    assert memory.phases(tpu)[phase] == memory.phases(parts)[phase] + copies
  assert memory.phases(tpu)["teacher rollouts"] > memory.phases(parts)["teacher rollouts"]
  assert memory.phases(tpu)["update"] == memory.phases(parts)["update"]
  # a path named like the official repository (not downloaded yet) takes its shapes
  assert memory.estimate(c, 64) == parts
  c.student.path = "/nowhere/my-student"
  with pytest.raises(FileNotFoundError, match="give --student_size"):
    memory.estimate(c, 64)
