"""The ``flwr`` command line, driven from Python with its own ``FLWR_HOME`` and
timeouts.

``flwr`` keeps its SuperLink connections in ``$FLWR_HOME/config.toml``; :class:`FlwrCli`
writes a private one (``[superlink.<name>]`` with the address and the CA certificate) so
that nothing in the user's own ``~/.flwr`` is read or changed. Every call has a timeout.
JSON output (``--format json``) is parsed; ``flwr run`` exits 0 even when the run
failed, so the status is read with ``flwr ls <connection> --run-id <id> --format json``.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from deploy.processes import flower_env
from deploy.processes import stop_tree

logger = logging.getLogger("bouquet.deploy")

CLI_TIMEOUT_S = 60.0
FINISHED = "finished:"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.5
) -> None:
    """Call ``check`` until it returns True; raise ``TimeoutError`` naming ``what``
    after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(poll_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def https_answers(host: str, port: int, ca_cert: Path, timeout_s: float = 3.0) -> bool:
    """True if an HTTPS server whose certificate ``ca_cert`` validates answers on
    ``host:port``."""
    import httpx

    try:
        ctx = ssl.create_default_context(cafile=str(ca_cert))
        httpx.get(f"https://{host}:{port}/health", verify=ctx, timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return True


def parse_json_output(text: str) -> dict[str, Any]:
    """The JSON object printed by ``flwr ... --format json`` (other lines ignored)."""
    start = text.find("{")
    if start < 0:
        raise ValueError(f"no JSON object in flwr output: {text[-500:]!r}")
    obj, _ = json.JSONDecoder().raw_decode(text[start:])
    if not isinstance(obj, dict):
        raise ValueError(f"flwr printed {type(obj).__name__}, not a JSON object")
    return obj


class FlwrCli:
    """``flwr`` subcommands against one named SuperLink connection.

    Parameters
    ----------
    home : path
        ``FLWR_HOME`` for the CLI (created).
    connection : str
        Name of the connection in ``config.toml``.
    """

    def __init__(self, home: str | Path, connection: str) -> None:
        self.home = Path(home).resolve()
        self.connection = connection
        self.env = flower_env(self.home)

    def write_connection(self, address: str, root_certificates: Path | None) -> Path:
        """Write ``config.toml`` with this connection as the default (TLS unless no CA
        given)."""
        self.home.mkdir(parents=True, exist_ok=True)
        security = (
            f'root-certificates = "{Path(root_certificates).resolve()}"'
            if root_certificates is not None
            else "insecure = true"
        )
        path = self.home / "config.toml"
        path.write_text(
            f'[superlink]\ndefault = "{self.connection}"\n\n'
            f'[superlink.{self.connection}]\naddress = "{address}"\n{security}\n'
        )
        return path

    def call(
        self, *args: str, timeout_s: float = CLI_TIMEOUT_S, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``flwr <args>``; raise ``RuntimeError`` with its output if it fails and
        ``check``."""
        argv = ["flwr", *args]
        try:
            out = subprocess.run(
                argv,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(
                f"`{' '.join(argv)}` took longer than {timeout_s:.0f} s"
            ) from exc
        if check and out.returncode != 0:
            raise RuntimeError(
                f"`{' '.join(argv)}` exited {out.returncode}: "
                f"{(out.stdout + out.stderr)[-1500:]}"
            )
        return out

    def call_json(self, *args: str, timeout_s: float = CLI_TIMEOUT_S) -> dict[str, Any]:
        out = self.call(*args, "--format", "json", timeout_s=timeout_s)
        return parse_json_output(out.stdout)

    def register_all(self, public_keys: Sequence[Path]) -> list[str]:
        """Register several public keys at once (each ``flwr`` call spends seconds
        importing)."""
        with ThreadPoolExecutor(max_workers=max(1, len(public_keys))) as pool:
            return list(pool.map(self.register, public_keys))

    def ready(self) -> bool:
        """True once the SuperLink answers ``flwr ls`` over TLS."""
        out = self.call(
            "ls", self.connection, "--format", "json", timeout_s=30, check=False
        )
        if out.returncode != 0:
            return False
        try:
            return bool(parse_json_output(out.stdout).get("success"))
        except ValueError:
            return False

    def register(self, public_key: Path) -> str:
        """Register a SuperNode public key; return the node id the SuperLink
        assigned."""
        res = self.call_json("supernode", "register", str(public_key), self.connection)
        if not res.get("success"):
            raise RuntimeError(f"registering {public_key} failed: {res}")
        return str(res.get("node-id"))

    def nodes(self) -> list[dict[str, Any]]:
        return list(self.call_json("supernode", "ls", self.connection).get("nodes", []))

    def nodes_online(self) -> int:
        return sum(1 for n in self.nodes() if n.get("status") == "online")

    def run_status(self, run_id: str) -> dict[str, Any]:
        """The run's entry of ``flwr ls --run-id`` (``status``, ``status-details``,
        ...)."""
        res = self.call_json("ls", self.connection, "--run-id", str(run_id))
        runs = res.get("runs") or []
        if not runs:
            raise RuntimeError(f"flwr ls knows no run {run_id}: {res}")
        return dict(runs[0])

    def wait_finished(self, run_id: str, timeout_s: float) -> dict[str, Any]:
        """Poll ``flwr ls`` until the run's status starts with ``finished:``."""
        info: dict[str, Any] = {}

        def done() -> bool:
            info.update(self.run_status(run_id))
            return str(info.get("status", "")).startswith(FINISHED)

        wait_until(done, timeout_s, f"run {run_id} to finish", poll_s=2.0)
        return info

    def stop_run(self, run_id: str) -> None:
        self.call("stop", str(run_id), self.connection, check=False)

    def run_stream(
        self, app: Path, run_config: str, log_path: Path, timeout_s: float
    ) -> tuple[int | None, str]:
        """``flwr run <app> <connection> --stream --run-config ...``, output into
        ``log_path``.

        Returns the exit code (None if it was stopped after ``timeout_s``) and the
        output.
        """
        argv = [
            "flwr",
            "run",
            str(app),
            self.connection,
            "--stream",
            "--run-config",
            run_config,
        ]
        logger.info("%s", " ".join(argv))
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            try:
                code: int | None = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                stop_tree(proc.pid, popen=proc)
                code = None
            except BaseException:  # interrupted: do not leave the streaming CLI behind
                stop_tree(proc.pid, popen=proc)
                raise
        return code, log_path.read_text(errors="replace")
