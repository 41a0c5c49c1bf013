"""Per-epoch resume state, kept outside DVC's outputs.

DVC deletes a stage's outputs before it reruns the stage, so a checkpoint
stored as an output would be gone exactly when a crashed stage is restarted.
The state lives in <project>/.resume/ instead, named by a key that hashes what
the stage declares in dvc.yaml (its params and the content of its deps, code
included: kd.dvc_stage.stage_fingerprint), so a changed experiment or changed
code never resumes from a stale state. The stage removes it last, once every
output is written; states of runs that will never resume are pruned (`prune`).
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from kd.files import InputFileError, load_torch, save_torch
from kd.params import project_root

# States of other keys of the same stage (interrupted runs of other params or
# code) are kept for a possible rerun, but at most this many, and not this long.
KEEP_OTHER_STATES = 2
MAX_AGE_DAYS = 7


class ResumeState:
    def __init__(self, stage: str, key: str, root: Path | None = None):
        self.stage = stage
        self.path = (root or project_root()) / ".resume" / f"{stage}-{key}.pt"

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            return load_torch(self.path)
        except InputFileError as e:  # a cache: start over rather than fail
            print(f"warning: ignoring resume state: {e}")
            self.clear()
            return None

    def save(self, state: dict) -> None:
        save_torch(state, self.path)
        _fault_injection(len(state["history"]))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def prune(self, keep: int = KEEP_OTHER_STATES, max_age_days: float = MAX_AGE_DAYS) -> list[Path]:
        """Remove this stage's other states beyond the newest `keep` or older than
        `max_age_days`; returns them. Newest by mtime: a run in progress saves every epoch."""
        others = sorted((p for p in self.path.parent.glob(f"{self.stage}-*.pt") if p != self.path),
                        key=lambda p: p.stat().st_mtime, reverse=True)
        cutoff = time.time() - max_age_days * 86400
        stale = others[keep:] + [p for p in others[:keep] if p.stat().st_mtime < cutoff]
        for p in stale:
            p.unlink(missing_ok=True)
        return stale


def _fault_injection(epoch: int) -> None:
    """Hooks for the tests, right after epoch N's state is on disk.
    KD_CRASH_AFTER_EPOCH=N: a real SIGKILL.
    KD_HOLD_AFTER_EPOCH=N:FILE: create FILE and wait until it is removed, so a
    test can edit params.yaml while the stage runs."""
    if os.environ.get("KD_CRASH_AFTER_EPOCH") == str(epoch):
        os.kill(os.getpid(), signal.SIGKILL)
    n, _, hold = os.environ.get("KD_HOLD_AFTER_EPOCH", "").partition(":")
    if n == str(epoch) and hold:
        Path(hold).touch()
        deadline = time.monotonic() + 300
        while Path(hold).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
