r"""Cloud TPU VMs from a workstation: create, set up, run on every worker, logs, stop, delete.

    python launch/tpu.py create --name zppo --zone us-east5-a --accelerator v5p-32 [--spot]
    python launch/tpu.py setup  --name zppo --zone us-east5-a
    python launch/tpu.py run    --name zppo --zone us-east5-a -- \
        --config configs/zppo.py:size=2b,mesh=tpu_v5p --workdir /tmp/zppo \
        --config.checkpoint.dir=gs://my-bucket/zppo-2b
    python launch/tpu.py logs   --name zppo --zone us-east5-a
    python launch/tpu.py stop   --name zppo --zone us-east5-a   # SIGTERM: checkpoint, exit
    python launch/tpu.py delete --name zppo --zone us-east5-a

Every command is printed before it runs; `--dry-run` only prints. `run` starts the same
trainer command on all workers (`--worker=all`); on a TPU VM `jax.distributed` finds its
peers by itself. Checkpoints must be where every worker reads and writes (a gs:// bucket);
metrics and the exported model are written by worker 0 under --workdir. `run --module
compare` (or evaluate) starts `python -m zppo_jax.compare` instead, the same way. `--queued`
creates a queued resource (waits for capacity) instead of a VM directly; `--spot` makes it
preemptible: preemption sends SIGTERM, the run checkpoints, and `run` again resumes.

Each worker logs to ~/zppo_run.log and keeps the run's process id in ~/zppo_run.pid. `run`
refuses to start while that process lives; `stop` sends SIGTERM to exactly that process (of a
comparison: to its current training or evaluation, after which the comparison ends), and a
worker without a live run only says so.
"""

from __future__ import annotations

import argparse
import os
import shlex

from shell import execute, split_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runtime (software) versions per TPU generation, from the Cloud TPU documentation.
RUNTIMES = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite",
            "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
REMOTE_DIR = "~/zppo_jax"
REMOTE_LOG = "~/zppo_run.log"
REMOTE_PID = "~/zppo_run.pid"  # the process id of the run that `run` started on the worker
# A worker's shell: true when REMOTE_PID names a live run, its id in $pid. (The command line
# is checked: an id from a finished run may since have been given to another process.)
RUN_ALIVE = (f'pid=$(cat {REMOTE_PID} 2>/dev/null) && '
             f'grep -qaF zppo_jax. "/proc/$pid/cmdline" 2>/dev/null')
ARCHIVE = "/tmp/zppo_jax.tar.gz"


def runtime_for(accelerator: str) -> str:
  family = accelerator.rsplit("-", 1)[0]
  if family not in RUNTIMES:
    raise SystemExit(f"--accelerator {accelerator}: unknown TPU generation {family!r} "
                     f"(known: {sorted(RUNTIMES)}); pass --version explicitly")
  return RUNTIMES[family]


def _where(args) -> list[str]:
  return [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])


def _ssh(args, command: str, worker: str = "all") -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *_where(args),
          f"--worker={worker}", f"--command={command}"]


def commands(args) -> list[list[str]]:
  """The gcloud (and local) commands of one subcommand."""
  tpus = ["gcloud", "compute", "tpus"]
  if args.action == "create":
    version = args.version or runtime_for(args.accelerator)
    if args.queued:
      return [tpus + ["queued-resources", "create", args.name, f"--node-id={args.name}",
                      *_where(args), f"--accelerator-type={args.accelerator}",
                      f"--runtime-version={version}"] + (["--spot"] if args.spot else [])]
    return [tpus + ["tpu-vm", "create", args.name, *_where(args),
                    f"--accelerator-type={args.accelerator}", f"--version={version}"]
            + (["--spot"] if args.spot else [])]
  if args.action == "setup":
    # (TPU VM images may lack python3-venv: installed on demand)
    venv = ("{ python3 -m venv ~/venv || { sudo apt-get -qq update && sudo apt-get -qq install "
            "-y python3-venv && python3 -m venv ~/venv; }; }")
    install = (f"{venv} && ~/venv/bin/pip install -q -U pip {shlex.quote(args.jax)} && "
               f"~/venv/bin/pip install -q -r requirements.txt")
    if args.git:
      return [_ssh(args, f"rm -rf {REMOTE_DIR} && git clone --depth 1 {shlex.quote(args.git)} "
                         f"{REMOTE_DIR} && cd {REMOTE_DIR} && {install}")]
    return [["git", "-C", REPO, "archive", "--format=tar.gz", f"--output={ARCHIVE}", "HEAD"],
            tpus + ["tpu-vm", "scp", ARCHIVE, f"{args.name}:{ARCHIVE}", *_where(args),
                    "--worker=all"],
            _ssh(args, f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && tar -xzf {ARCHIVE} "
                       f"-C {REMOTE_DIR} && cd {REMOTE_DIR} && {install}")]
  if args.action == "run":
    if not args.train_args:
      raise SystemExit("run: give the trainer's arguments after --, e.g. -- --config "
                       "configs/zppo.py --workdir /tmp/zppo")
    train = f"~/venv/bin/python -m zppo_jax.{args.module} " + shlex.join(args.train_args)
    # setsid + nohup: the trainer outlives the ssh session; all workers log locally. Started as
    # a simple command in the background, $! is the trainer (setsid and nohup exec into it).
    busy = (f'if {RUN_ALIVE}; then echo "$(hostname): run $pid ({REMOTE_PID}) is still running: '
            f'stop it and let it end first" >&2; exit 1; fi')
    return [_ssh(args, f"{busy}; cd {REMOTE_DIR} && {{ setsid nohup {train} > {REMOTE_LOG} "
                       f"2>&1 < /dev/null & echo $! > {REMOTE_PID}; }}")]
  if args.action == "logs":
    return [_ssh(args, f"tail -n 200 -F {REMOTE_LOG}", worker=args.worker)]
  if args.action == "stop":  # SIGTERM: every worker checkpoints at the same step and exits
    # By the recorded id, not by a pattern over every command line (`pkill -f zppo_jax.train`
    # matched its own shell too). A comparison runs each training (or evaluation) as its child:
    # that child is signalled, checkpoints, and the comparison then ends by itself.
    child = "pkill -TERM -P \"$pid\" -f 'zppo_jax[.](train|evaluate)( |$)'"
    return [_ssh(args, f'if ! {{ {RUN_ALIVE}; }}; then echo "$(hostname): no live run in '
                       f'{REMOTE_PID}"; elif {child}; then echo "$(hostname): SIGTERM to the '
                       f'current run of comparison $pid"; else kill -TERM "$pid" && echo '
                       f'"$(hostname): SIGTERM to run $pid"; fi')]
  if args.action == "delete":
    if args.queued:
      return [tpus + ["queued-resources", "delete", args.name, *_where(args), "--force",
                      "--quiet"]]
    return [tpus + ["tpu-vm", "delete", args.name, *_where(args), "--quiet"]]
  raise SystemExit(f"unknown action {args.action}")


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("action", choices=("create", "setup", "run", "logs", "stop", "delete"))
  p.add_argument("--name", required=True, help="TPU VM (and queued resource) name")
  p.add_argument("--zone", required=True)
  p.add_argument("--project", default="", help="default: gcloud's configured project")
  p.add_argument("--accelerator", default="v5p-8", help="e.g. v5p-32, v6e-16, v5litepod-16")
  p.add_argument("--version", default="", help="TPU runtime; default by generation")
  p.add_argument("--spot", action="store_true", help="preemptible (spot) capacity")
  p.add_argument("--queued", action="store_true", help="a queued resource, not a direct VM")
  p.add_argument("--git", default="", help="setup: clone this URL instead of copying HEAD")
  p.add_argument("--jax", default="jax[tpu]", help="setup: the jax requirement to install")
  p.add_argument("--worker", default="0", help="logs: which worker's log")
  p.add_argument("--module", default="train", choices=("train", "evaluate", "compare"),
                 help="run: python -m zppo_jax.<module> (compare: every method x seed in turn; "
                      "its --workdir must be shared by all workers)")
  p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  own, train_args = split_args(argv)
  args = p.parse_args(own)
  args.train_args = train_args
  return args


if __name__ == "__main__":
  parsed = parse()
  execute(commands(parsed), parsed.dry_run)
