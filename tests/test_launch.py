"""launch/ scripts: the commands they would run (--dry-run), the SLURM script run under fake
`srun`/`scontrol`/`python` and clean under shellcheck; the memory tool's arithmetic."""

import os
import shlex
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from zppo_jax import memory, run_config
from zppo_jax.models import qwen3_5

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")


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
  assert remote.startswith("cd ~/zppo_jax && setsid nohup ~/venv/bin/python -m zppo_jax.train")

  [compare] = _dry("tpu.py", "run", *TPU, "--module", "compare", "--", "--workdir", "/mnt/c")
  assert "python -m zppo_jax.compare --workdir /mnt/c > " in compare[-1]

  [logs] = _dry("tpu.py", "logs", *TPU, "--worker", "3")
  assert "--worker=3" in logs and logs[-1].startswith("--command=tail")
  [stop] = _dry("tpu.py", "stop", *TPU)
  assert stop[-1] == "--command=pkill -TERM -f zppo_jax.train || true"  # graceful: checkpoint
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

  shellcheck = shutil.which("shellcheck", path=os.path.dirname(sys.executable)) or "shellcheck"
  lint = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
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


# ---------------------------------------------------------------------------- memory tool

def test_memory_estimate_divides_by_the_mesh():
  c = run_config.config_module("tiny.py").get_config()
  c.mesh.shape = (1, -1, 1)
  one = memory.estimate(c, 1)
  four = memory.estimate(c, 4)
  student = memory.model_config(c.student.path, None, "student")
  params = jax.eval_shape(lambda: qwen3_5.init_params(student, jax.random.key(0), jnp.float32))
  n = sum(x.size for x in jax.tree.leaves(params))
  assert one["student params"] == 4 * n                       # float32, one device
  assert 0 <= one["optimizer state"] - 2 * one["student params"] <= 64  # AdamW: 2 moments, a count
  assert four["student params"] < one["student params"]       # FSDP splits what divides
  # rows split 4 ways; the cache's 4-byte write index is on every device
  assert one["rollout cache (original)"] - 4 == 4 * (four["rollout cache (original)"] - 4)
  assert "teacher params" in one and "sampling copy (compute dtype)" not in one
  assert memory.peak(one) == (sum(v for k, v in one.items() if "cache" not in k)
                              + max(v for k, v in one.items() if "cache" in k))
  with pytest.raises(ValueError, match=r"mesh shape \[1, 4, -1\] does not divide 6 devices"):
    memory.abstract_mesh((1, 4, -1), 6)


def test_memory_real_sizes_from_official_shapes():
  c = run_config.method_config("zppo", "size=2b,mesh=tpu_v5p")
  parts = memory.estimate(c, 64, student_size="2b", teacher_size="27b")
  for part, size, dtype_bytes in (("teacher params", "27b", 2), ("student params", "2b", 4)):
    n = qwen3_5.param_count(memory.model_config("", size, ""))
    assert parts[part] == pytest.approx(n * dtype_bytes / 64, rel=0.02)  # FSDP over 64
  with pytest.raises(FileNotFoundError, match="give --student_size"):
    memory.estimate(c, 64)
