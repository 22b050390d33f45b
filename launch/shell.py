"""What the launchers share: print each command as a shell line, then run it (or not)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from typing import Sequence


def execute(commands: Sequence[Sequence[str]], dry_run: bool) -> None:
  """Prints every command first (`+ ...`, copy-pasteable), then runs them in order, stopping
  at the first that fails (its exit status becomes ours)."""
  for cmd in commands:
    print("+ " + shlex.join(cmd), flush=True)
  if dry_run:
    return
  for cmd in commands:
    status = subprocess.run(cmd, check=False).returncode
    if status:
      sys.exit(f"failed ({status}): {shlex.join(cmd)}")


def split_args(argv=None) -> tuple[list[str], list[str]]:
  """(the launcher's arguments, the trainer's arguments after `--`)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  cut = argv.index("--") if "--" in argv else len(argv)
  return argv[:cut], argv[cut + 1:]
