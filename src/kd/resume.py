"""Per-epoch resume state, kept outside DVC's outputs.

DVC deletes a stage's outputs before it reruns the stage, so a checkpoint
stored as an output would be gone exactly when a crashed stage is restarted.
The state lives in <project>/.resume/ instead, named by a key that hashes the
stage, its params and its inputs, so a changed experiment never resumes from
a stale state. It is removed once the stage has finished.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

from kd.files import InputFileError, load_torch, save_torch
from kd.params import project_root


def resume_key(stage: str, config: dict, inputs: dict[str, str]) -> str:
    blob = json.dumps({"stage": stage, "config": config, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ResumeState:
    def __init__(self, stage: str, key: str, root: Path | None = None):
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
        # Fault injection for the kill-and-resume test: a real SIGKILL right
        # after epoch N's state is on disk.
        if os.environ.get("KD_CRASH_AFTER_EPOCH") == str(len(state["history"])):
            os.kill(os.getpid(), signal.SIGKILL)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
