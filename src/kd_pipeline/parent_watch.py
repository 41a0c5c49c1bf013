"""A stage ends with the dvc that started it.

When `dvc repro` is stopped (SIGTERM, SIGHUP, SIGKILL), dvc exits at once and
leaves its stage running as an orphan; the next `dvc repro` would then start the
same stage again in the same workspace. So a stage started by DVC (DVC sets
DVC_STAGE) watches its ancestors up to the dvc process (a shell, torchrun may sit
between) and stops itself when one is gone, as if it got SIGTERM: the harness then
ends it like any stopped run (MLflow run KILLED, resume state kept). A stage run
by hand is left to its shell (`nohup` must keep working), which sends SIGHUP itself.
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

POLL_SECONDS = 0.5


class Stopped(KeyboardInterrupt):
    """The stage was told to stop (a signal, or its dvc is gone): ended as KILLED, resumable.
    A KeyboardInterrupt, so that code catching Exception does not swallow it."""

    def __init__(self, reason: str, signum: int):
        super().__init__(reason)
        self.reason, self.signum = reason, signum


_reason: str | None = None  # set by the watcher before it signals the main thread
_STOPS = (signal.SIGTERM, signal.SIGHUP)


def _raise_stopped(signum, _frame):
    raise Stopped(_reason or f"stopped by {signal.Signals(signum).name}", signum)


def stop_on_signals() -> dict:
    """SIGTERM and SIGHUP raise Stopped in the main thread, so the stage ends cleanly;
    returns the handlers they had."""
    return {sig: signal.signal(sig, _raise_stopped) for sig in _STOPS}


_mask_before_fork: set | None = None


def _hold_stops_over_fork() -> None:
    # CPython drops a signal that reaches the child before it has re-initialised: held
    # blocked over the fork, it stays pending until the child has its default action.
    global _mask_before_fork
    if signal.getsignal(signal.SIGTERM) is _raise_stopped:
        _mask_before_fork = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)


def _release_stops(in_child: bool) -> None:
    """A fork of a stage (a worker of the decoding pool) is not the stage: whoever ends it
    with SIGTERM, its pool's terminate() included, must end it wherever it is. A Python
    handler runs only between bytecodes, so a worker that got the signal just before it
    blocked on its pool's queue lock slept there for good, and the stage hung in join()."""
    global _mask_before_fork
    if _mask_before_fork is None:
        return
    if in_child:
        for sig in _STOPS:
            signal.signal(sig, signal.SIG_DFL)
    mask, _mask_before_fork = _mask_before_fork, None
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


os.register_at_fork(before=_hold_stops_over_fork, after_in_parent=lambda: _release_stops(False),
                    after_in_child=lambda: _release_stops(True))


def restore_signals(handlers: dict) -> None:
    for sig, old in handlers.items():
        signal.signal(sig, old)


def ignore_further_stops() -> None:
    """While the stage ends (MLflow, its message), a second signal must not cut that short."""
    for sig in _STOPS:
        signal.signal(sig, signal.SIG_IGN)


def watch_dvc() -> None:
    """Under DVC, stop this process when the dvc that started it (or a process between) is gone."""
    if "DVC_STAGE" not in os.environ:
        return
    chain = _ancestors_up_to_dvc()
    if chain:
        threading.Thread(target=_watch, args=(chain,), name="kd-parent-watch", daemon=True).start()


def _ancestors_up_to_dvc() -> list[tuple["psutil.Process", str]]:
    """(process, what it is) from the parent up to the first dvc process."""
    import psutil  # a dependency of dvc

    chain = []
    try:
        p = psutil.Process().parent()
        while p is not None and p.pid > 1:
            cmd = p.cmdline()
            is_dvc = any(Path(t).name == "dvc" for t in cmd[:3])  # `dvc ...`, `python -m dvc ...`
            chain.append((p, "its dvc process" if is_dvc else f"its parent {p.name()}"))
            if is_dvc:
                return chain
            p = p.parent()
    except psutil.Error:
        pass
    return chain[:1]  # no dvc among them (an odd launcher): the parent at least


def _gone(p: "psutil.Process") -> bool:
    import psutil

    try:
        # is_running() knows a process by its start in ticks since boot. Its start in wall-clock
        # time (create_time()) moves by a whole second when a clock step carries the kernel's
        # btime over a second boundary: that stopped two live stages on 2026-12-07.
        # A killed dvc stays a zombie until whoever started it reaps it.
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def _watch(chain: list[tuple["psutil.Process", str]]) -> None:
    global _reason
    import time

    while True:
        for p, what in chain:
            if _gone(p):
                _reason = f"{what} (pid {p.pid}) is gone"
                os.kill(os.getpid(), signal.SIGTERM)
                return
        time.sleep(POLL_SECONDS)
