"""Whether a benchmark ran under the team's exclusive "quiet" lock, so its write-up can say so."""

from __future__ import annotations

import os
from pathlib import Path

QUIET_LOCK = "/tmp/quiet.lock"


def held_exclusively(lock: str = QUIET_LOCK) -> bool:
    """Whether this run was started under `flock -x LOCK` (an ancestor process holds it exclusively).

    Why: the write-up must say whether other work shared the 2 cores; the team's rule is that
    measurements run under the exclusive quiet lock and every heavy run takes it shared.
    """
    pid = os.getppid()
    while pid > 1:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        args = [a.decode(errors="replace") for a in argv if a]
        if args and Path(args[0]).name == "flock" and lock in args:
            options = args[1:args.index(lock)]
            return any(o in ("-x", "-e", "--exclusive") for o in options) or not any(
                o in ("-s", "--shared") for o in options)  # flock's default is exclusive
    return False
