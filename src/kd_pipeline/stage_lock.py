"""One run of a stage per workspace at a time.

Two runs of the same stage in one workspace (a second `dvc repro` while an orphaned
stage still ran, or a stage started by hand beside dvc's) would write the same outputs
and resume state at once. DVC's own lock (.dvc/tmp/lock) only holds while its dvc
process lives, so each stage also holds an flock on .resume/<stage>.lock: the kernel
releases it when the process ends, however it ends, so it is never stale.
"""
from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO

from kd.errors import UserError
from kd.process_id import this_process


class StageBusyError(UserError, RuntimeError):
    """The same stage already runs in this workspace."""


def hold_stage_lock(name: str) -> IO:
    """Lock the stage for this process (keep the returned file open) or refuse."""
    # The workspace's own .resume/, not project_root()'s: each `dvc exp run --queue` copy is a
    # workspace of its own, and queued experiments may run the same stage side by side.
    path = Path(".resume") / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        other = f.read().strip().partition("@")[0] or "unknown"
        f.close()
        raise StageBusyError(f"stage {name} is already running in this workspace (pid {other}); "
                             f"wait for it to end, or stop it (`kill {other}`) and rerun") from None
    f.seek(0)
    f.truncate()
    f.write(this_process() + "\n")  # who holds it, for the message above
    f.flush()
    return f
