r"""Multi-node GPU training under SLURM: writes an sbatch script and submits it.

    python launch/slurm.py --nodes 4 --gpus-per-node 8 --partition gpu --time 48:00:00 -- \
        --config configs/zppo.py:size=9b,mesh=gpu_8xh100 --workdir /shared/runs/zppo-9b \
        --config.mesh.shape='(4,8,1)'

One task per node, each the same trainer command with JAX's explicit multi-process flags:
`--coordinator_address` (the first node), `--num_processes` ($SLURM_NTASKS) and
`--process_id` ($SLURM_PROCID). --workdir must be on a filesystem every node shares (orbax
writes each host's shards there). SLURM sends SIGTERM `--grace` seconds before the time
limit (and on preemption): the trainer checkpoints and exits 0; submitting the same script
again resumes. `--dry-run` prints the script and the sbatch command without submitting.
Every value that goes into the script must be printable text (no newline: it would be a line
of the script), and a directive's value is quoted when sbatch would otherwise split it.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex

from shell import execute, split_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _directive(key: str, value) -> str:
  """`#SBATCH --key=value`. sbatch reads a directive like a shell: whitespace separates options,
  quotes and backslashes are removed, an unquoted `#` starts a comment. A value with any of these
  is double-quoted, so it stays one value and adds no option (`--job-name 'x --account=y'`)."""
  text = str(value)
  if re.search(r"[\s#'\"\\]", text):
    text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
  return f"#SBATCH --{key}={text}"


def script(args) -> str:
  """The sbatch script (bash)."""
  directives = {"job-name": args.job_name, "nodes": args.nodes, "ntasks-per-node": 1,
                "gpus-per-node": args.gpus_per_node, "cpus-per-task": args.cpus_per_task,
                "time": args.time, "output": args.output, "signal": f"TERM@{args.grace}",
                "partition": args.partition, "account": args.account}
  lines = ["#!/usr/bin/env bash"]
  lines += [_directive(k, v) for k, v in directives.items() if v not in ("", None)]
  # every argument single-quoted (commas in config args read as array separators otherwise)
  quoted = ["'" + a.replace("'", "'\\''") + "'" for a in args.train_args]
  train = " ".join(["python", "-m", "zppo_jax.train"] + quoted)
  lines += [
      "set -euo pipefail",
      f"cd {shlex.quote(args.repo)}",
      "# shellcheck source=/dev/null",
      f"source {shlex.quote(os.path.join(args.venv, 'bin', 'activate'))}",
      "# Process 0 (the first node) coordinates jax.distributed.",
      "# (all of scontrol's output is read: `| head -n 1` would SIGPIPE it under pipefail)",
      'mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
      'first_node="${nodes[0]}"',
      f"train=({train}",
      f'       --coordinator_address="$first_node:{args.port}"',
      '       --num_processes="$SLURM_NTASKS")',
      "# Each task appends its own rank; single quotes: expanded by the task's shell.",
      "# shellcheck disable=SC2016",
      'srun --kill-on-bad-exit=1 bash -c \'exec "$@" --process_id="$SLURM_PROCID"\' _ '
      '"${train[@]}"',
  ]
  return "\n".join(lines) + "\n"


def _integer(low: int, high: int | None = None):
  """An argparse type: an integer from `low` to `high` (argparse names the flag at fault)."""
  def integer(text: str) -> int:
    n = int(text)
    if n < low or (high is not None and n > high):
      bounds = f">= {low}" if high is None else f"in {low}..{high}"
      raise argparse.ArgumentTypeError(f"must be {bounds}, got {n}")
    return n
  return integer


def _printable(text: str) -> str:
  """An argparse type: text that goes into the script, where a newline or any other
  non-printable character would start a line of its own (`--job-name $'x\\nrm -rf ~'`)."""
  bad = next((c for c in text if not c.isprintable()), None)
  if bad is not None:
    raise argparse.ArgumentTypeError(f"{text!r} contains the non-printable character {bad!r}")
  return text


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--nodes", type=_integer(1), required=True)
  p.add_argument("--gpus-per-node", type=_integer(0), default=8)
  p.add_argument("--cpus-per-task", type=_integer(1), default=32)
  p.add_argument("--time", type=_printable, default="24:00:00",
                 help="time limit (HH:MM:SS or D-HH:MM:SS)")
  # sbatch's --signal takes 0..65535 seconds
  p.add_argument("--grace", type=_integer(0, 65535), default=300,
                 help="seconds before the limit at which SIGTERM asks for a checkpoint")
  p.add_argument("--partition", type=_printable, default="")
  p.add_argument("--account", type=_printable, default="")
  p.add_argument("--job-name", type=_printable, default="zppo")
  p.add_argument("--output", type=_printable, default="zppo-%j.log",
                 help="log file (%%j: job id)")
  p.add_argument("--port", type=_integer(1, 65535), default=12321,
                 help="coordinator port on node 0")
  p.add_argument("--repo", type=_printable, default=REPO,
                 help="the project directory on the cluster")
  p.add_argument("--venv", type=_printable, default=os.path.join(REPO, ".venv"),
                 help="virtual environment with jax[cuda12] and requirements.txt")
  p.add_argument("--script", default="zppo.sbatch", help="where to write the sbatch script")
  p.add_argument("--dry-run", action="store_true", help="print, write nothing, submit nothing")
  own, train_args = split_args(argv)
  args = p.parse_args(own)
  args.train_args = train_args
  if not args.train_args:
    p.error("give the trainer's arguments after --, e.g. -- --config configs/zppo.py "
            "--workdir /shared/zppo")
  for arg in args.train_args:
    try:
      _printable(arg)
    except argparse.ArgumentTypeError as e:
      p.error(f"trainer argument (after --): {e}")
  return args


if __name__ == "__main__":
  parsed = parse()
  text = script(parsed)
  print(f"# {parsed.script}\n{text}", end="", flush=True)
  if not parsed.dry_run:
    with open(parsed.script, "w") as f:
      f.write(text)
  execute([["sbatch", parsed.script]], parsed.dry_run)
