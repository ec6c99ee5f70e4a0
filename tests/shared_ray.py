"""A Ray head shared by one test module's ``bouquet-sim`` runs (:class:`SharedRay`).

Its own module, not ``conftest.py``: pytest runs with ``--import-mode=importlib``, so
the ``conftest`` that test modules import is another module object than the one pytest
calls hooks on; both import this one module, so they share its state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_ray_head(temp: Path, num_cpus: int) -> tuple[Any, int]:
    """``ray start --head --block`` on 127.0.0.1 with ``temp`` as its temp dir (its log
    in ``temp/ray-head.log``); returns the process (a ``ManagedProcess``: stop it by
    PID) and its GCS port once that accepts connections. ``RuntimeError`` with the end
    of the log if it does not within 120 s."""
    import sys

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from deploy.flwrcli import free_port
    from deploy.flwrcli import wait_until
    from deploy.processes import ManagedProcess
    from deploy.processes import flower_env

    port = free_port()
    ray = str(Path(sys.executable).with_name("ray"))
    head = ManagedProcess(
        "ray-head",
        [
            ray,
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            f"--num-cpus={num_cpus}",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        temp / "ray-head.log",
        flower_env(),
    )

    def ready() -> bool:
        if not head.running():
            raise RuntimeError("the Ray head exited")
        return port_open(port)

    try:
        wait_until(ready, 120, "the Ray head's port")
    except (RuntimeError, TimeoutError) as exc:
        head.stop()
        log = (temp / "ray-head.log").read_text()[-2000:]
        raise RuntimeError(f"the Ray head did not start ({exc}):\n{log}") from exc
    return head, port


class SharedRay:
    """One Ray head per test module for that module's ``bouquet-sim`` runs.

    Each run joins it (``RAY_ADDRESS``, as ``tests/e2e/test_ray_cluster.py`` checks a
    run can) instead of starting and stopping a Ray of its own: ~6 s less per run on
    the two-core machine. The head listens on 127.0.0.1, is started on the first run of
    a module and stopped by PID (its whole process tree) when that module's last test
    ends (``pytest_runtest_teardown`` in ``conftest.py``), so no head outlives its
    module. A run whose environment already names ``RAY_ADDRESS`` keeps it. Its temp
    dir is its own, so a Ray started without an address elsewhere on the machine never
    finds it.
    """

    head: Any = None
    address = ""
    temp: Path | None = None

    @classmethod
    def address_for_run(cls) -> str:
        if cls.head is not None and cls.head.running():
            return cls.address
        cls.stop()
        import tempfile

        # Ray's socket paths must stay < 108 bytes
        cls.temp = Path(tempfile.mkdtemp(prefix="bqray", dir="/tmp"))
        cls.head, port = start_ray_head(cls.temp, os.cpu_count() or 1)
        cls.address = f"127.0.0.1:{port}"
        return cls.address

    @classmethod
    def stop(cls) -> None:
        import shutil

        if cls.head is not None:
            cls.head.stop()
        if cls.temp is not None:
            shutil.rmtree(cls.temp, ignore_errors=True)
        cls.head, cls.address, cls.temp = None, "", None
