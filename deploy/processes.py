"""Start Flower processes with a clean environment and stop them, children included, by
PID.

Every ``flower-superlink`` / ``flower-supernode`` starts a ``flower-superexec`` child
(the SuperLink's in its own session) that exits a few seconds after its parent, and each
message or run starts ``flwr-clientapp`` / ``flwr-serverapp`` grandchildren.
:func:`stop_tree` collects the whole tree with ``pgrep -P`` *before* signalling, sends
SIGTERM, waits, and SIGKILLs what is left. Nothing is ever stopped by name.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from collections.abc import Sequence
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

VENV_BIN = Path(sys.executable).parent
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def flower_env(
    flwr_home: str | os.PathLike[str] | None = None, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment for a Flower process: no network side trips, the venv first on
    PATH."""
    env = dict(os.environ)
    env.update(FLOWER_ENV)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    env.update(extra or {})
    return env


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (``pgrep -P``)."""
    out = subprocess.run(
        ["pgrep", "-P", str(pid)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return [int(p) for p in out.stdout.split()]


def descendants(pid: int) -> list[int]:
    """All descendants of ``pid``, parents before children."""
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = children(todo.pop())
        found.extend(kids)
        todo.extend(kids)
    return found


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): fall back to signal 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _proc_kb(path: str, field: str) -> int:
    """The kB value of ``field`` (e.g. ``VmHWM:``) in the ``/proc`` file ``path`` (0 if
    unknown)."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_kb(pid: int) -> int:
    """Peak resident set size of ``pid`` in kB (``VmHWM`` in ``/proc``; 0 if
    unknown)."""
    return _proc_kb(f"/proc/{pid}/status", "VmHWM:")


def pss_kb(pid: int) -> int:
    """Proportional set size of ``pid`` in kB now (``Pss`` in
    ``/proc/<pid>/smaps_rollup``; 0 if unknown): its private pages plus its share of
    pages mapped by several processes (torch's libraries, shared by every worker), so
    the PSS of all processes adds up to the memory used."""
    return _proc_kb(f"/proc/{pid}/smaps_rollup", "Pss:")


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop_tree(
    pid: int, timeout_s: float = 20.0, popen: subprocess.Popen | None = None
) -> list[int]:
    """SIGTERM ``pid`` and its descendants, wait up to ``timeout_s``, then SIGKILL
    survivors.

    Returns the PIDs that had to be killed.
    """
    tree = [pid, *descendants(pid)]
    for p in tree:
        _signal(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if popen is not None:
            popen.poll()  # reap our own child so it does not stay a zombie
        if not any(alive(p) for p in tree):
            return []
        time.sleep(0.2)
    killed = [p for p in tree if alive(p)]
    for p in killed:
        _signal(p, signal.SIGKILL)
    if popen is not None:
        try:
            popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            logger.warning("pid %d did not exit after SIGKILL", popen.pid)
    # SIGKILL is delivered asynchronously: a grandchild can still be running (state R/S)
    # for a moment, then is a zombie until init reaps it. Wait until every killed PID is
    # gone or a zombie.
    deadline = time.monotonic() + 5.0
    while any(alive(p) for p in killed) and time.monotonic() < deadline:
        time.sleep(0.02)
    still = [p for p in killed if alive(p)]
    if still:
        logger.warning("pids %s still alive 5 s after SIGKILL", still)
    if killed:
        logger.warning("had to SIGKILL %s", killed)
    return killed


class ManagedProcess:
    """A process we started, its output in ``log_path``; :meth:`stop` stops its whole
    tree.

    Parameters
    ----------
    name : str
        For messages.
    argv : sequence of str
        Command line.
    log_path : path
        stdout and stderr go here.
    env : dict
        Environment (see :func:`flower_env`).
    cwd : path, optional
        Working directory.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: str | os.PathLike[str],
        env: dict[str, str],
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = open(self.log_path, "ab")  # closed in stop()
        self.popen = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        logger.info("started %s (pid %d): %s", name, self.pid, " ".join(self.argv))

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout_s: float) -> int | None:
        """Wait up to ``timeout_s`` for the exit code (None if still running)."""
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 20.0) -> list[int]:
        """Stop the process and every descendant; return the PIDs that needed
        SIGKILL."""
        killed = stop_tree(self.pid, timeout_s=timeout_s, popen=self.popen)
        self._log.close()
        return killed


def tree_mb(
    processes: list[ManagedProcess], measure_kb: Callable[[int], int]
) -> dict[str, float]:
    """``measure_kb`` (:func:`peak_rss_kb` or :func:`pss_kb`) of each running process
    and its descendants together, in MB, by process name."""
    return {
        proc.name: round(
            sum(measure_kb(p) for p in [proc.pid, *descendants(proc.pid)]) / 1024, 1
        )
        for proc in processes
        if proc.running()
    }
