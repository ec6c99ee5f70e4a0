"""Run a bouquet experiment on a real Flower deployment on this machine (127.0.0.1
only).

What :class:`LocalDeployment` does, in order (every wait has a timeout):

1. writes a CA, a SuperLink certificate (subjectAltName ``IP:127.0.0.1``,
   ``DNS:localhost``) and one ECDSA key pair per SuperNode into the git-ignored
   ``deploy/.state/`` (:mod:`pki`);
2. starts ``flower-superlink`` with TLS and ``--enable-supernode-auth`` on a free port;
3. registers every SuperNode's public key (``flwr supernode register``) and keeps the
   node ids; every run is pinned to them (``+simulation.node_ids=[...]``): a node
   someone else registers through the Control API is never sampled;
4. starts N ``flower-supernode`` processes (own port, own ``FLWR_HOME``, ``--node-config
   "partition-id=i num-partitions=N"``) and waits until the SuperLink lists them online;
5. :meth:`LocalDeployment.run` submits the app with ``flwr run <app> <connection>
   --stream --run-config 'overrides="..." run-dir="..."'``, reads the final status with
   ``flwr ls`` (``flwr run`` exits 0 even when the run failed), copies the logs into the
   run directory and raises :class:`DeployFailed` with the reason if the run did not
   complete;
6. :meth:`LocalDeployment.stop` stops every process it started, children included, by
   PID; the context manager and the command line's (:mod:`deploy.cli`) ``try/finally``
   and signal handlers make sure that also happens on failure.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from deploy.flwrcli import FlwrCli
from deploy.flwrcli import free_port
from deploy.flwrcli import https_answers
from deploy.flwrcli import wait_until
from deploy.outcome import RUN_STARTED
from deploy.outcome import DeployFailed
from deploy.outcome import RunOutcome
from deploy.outcome import last_exception
from deploy.pki import TlsFiles
from deploy.pki import make_node_key
from deploy.pki import make_tls
from deploy.pki import write_private
from deploy.processes import ManagedProcess
from deploy.processes import flower_env
from deploy.processes import peak_rss_kb
from deploy.processes import pss_kb
from deploy.processes import tree_mb
from deploy.supernode import DEFAULT_POLL_S
from deploy.supernode import ENV_POLL

logger = logging.getLogger("bouquet.deploy")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STATE = ROOT / "deploy" / ".state"
CONNECTION = "bouquet-local"
# imported by each warm worker before it serves: torch, torch's first-optimizer-step
# import, the app
WORKER_PRELOAD = ("torch", "torch._dynamo", "bouquet.simulations.run.flower_app")
HOST = "127.0.0.1"


class LocalDeployment:
    """A SuperLink and ``num_nodes`` SuperNodes on 127.0.0.1 with TLS and node
    authentication.

    Parameters
    ----------
    num_nodes : int
        SuperNodes to start (partition ids ``0..num_nodes-1``).
    state_dir : path
        Where certificates, keys, ``FLWR_HOME`` folders and logs go (git-ignored by
        default).
    port : int
        SuperLink port; 0 picks a free one.
    start_timeout_s : float
        Bound on each start-up wait (SuperLink ready, nodes online).
    warm : bool
        True (default): each SuperNode runs with ``--isolation process`` beside one
        :mod:`deploy.warm_clientapp` worker (ClientApp tasks run in that warm process,
        tasks acquired with a per-node SuperExec secret), and is started by
        :mod:`deploy.supernode` (idle poll ``node_poll_s`` instead of Flower's 3 s).
        False: Flower's defaults (``flower-supernode``, a fresh ``flwr-clientapp``
        process per message).
    node_poll_s : float, optional
        The warm SuperNodes' longest idle pause (default: 0.1 s per node, at least
        :data:`deploy.supernode.DEFAULT_POLL_S`, at most 2 s).
    """

    def __init__(
        self,
        *,
        num_nodes: int = 2,
        state_dir: str | Path = DEFAULT_STATE,
        port: int = 0,
        start_timeout_s: float = 90.0,
        warm: bool = True,
        node_poll_s: float | None = None,
    ) -> None:
        if num_nodes < 1:
            raise ValueError(f"num_nodes={num_nodes} must be >= 1")
        if port < 0 or port > 65535:
            raise ValueError(f"port={port} must be in [0, 65535]")
        self.num_nodes = num_nodes
        self.state = Path(state_dir).resolve()
        self.port = port or free_port()
        self.start_timeout_s = start_timeout_s
        self.warm = warm
        # every idle poll is a TLS request the one SuperLink process serves (~7 ms of
        # its CPU here): the longest idle pause grows with the number of nodes, so that
        # idle load stays ~10 requests/s
        self.node_poll_s = (
            node_poll_s
            if node_poll_s is not None
            else min(2.0, max(DEFAULT_POLL_S, 0.1 * num_nodes))
        )
        self.workers: list[ManagedProcess] = []
        # assigned by the SuperLink when start() registers the keys
        self.node_ids: list[int] = []
        self.logs = self.state / "logs"
        self.processes: list[ManagedProcess] = []  # running, stopped by stop()
        self.started_pids: list[int] = []  # every PID ever started (for checks)
        self.superlink: ManagedProcess | None = None
        self.nodes: list[ManagedProcess] = []
        self.tls: TlsFiles | None = None
        self.cli = FlwrCli(self.state / "cli-home", CONNECTION)
        # seconds per start-up step (for benchmarks)
        self.timings: dict[str, float] = {}

    # ---------------------------------------------------------------- start
    def __enter__(self) -> LocalDeployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Certificates, SuperLink, key registration, SuperNodes; waits until all are
        online."""
        self.state.mkdir(parents=True, exist_ok=True)
        for old in [*self.logs.glob("*.log"), *self.logs.glob("*.timings.jsonl")]:
            old.unlink()
        step = time.perf_counter()

        def done(name: str) -> None:
            nonlocal step
            now = time.perf_counter()
            self.timings[name] = round(now - step, 2)
            step = now

        self.tls = make_tls(self.state / "tls")
        node_keys = [self.node_key(f"supernode-{i}") for i in range(self.num_nodes)]
        self.cli.write_connection(f"{HOST}:{self.port}", self.tls.ca_cert)
        done("certificates + node keys")
        self.start_superlink()
        done("SuperLink started, TLS answering")
        self.node_ids = [
            int(n)
            for n in self.cli.register_all(
                [k.with_name(k.name + ".pub") for k in node_keys]
            )
        ]
        done("node keys registered (flwr supernode register)")
        for i, key in enumerate(node_keys):
            self.nodes.append(self.start_supernode(i, key))
        self.wait_nodes_online(self.num_nodes)
        done("SuperNodes started and online")

    def node_key(self, name: str) -> Path:
        """Private key path of a fresh ECDSA key pair ``keys/<name>`` (public key:
        ``.pub``)."""
        private, _ = make_node_key(self.state / "keys" / name)
        return private

    def start_superlink(self) -> ManagedProcess:
        """Start ``flower-superlink`` with TLS and SuperNode authentication; wait until
        ready."""
        tls = self._tls()
        argv = [
            "flower-superlink",
            "--ssl-ca-certfile",
            str(tls.ca_cert),
            "--ssl-certfile",
            str(tls.server_cert),
            "--ssl-keyfile",
            str(tls.server_key),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--host",
            HOST,
            "--port",
            str(self.port),
        ]
        proc = self._spawn("superlink", argv, self.state / "superlink-home")
        self.superlink = proc
        wait_until(
            lambda: https_answers(HOST, self.port, tls.ca_cert) or _raise_if_dead(proc),
            self.start_timeout_s,
            f"SuperLink on {HOST}:{self.port} ready (log: {proc.log_path})",
        )
        return proc

    def start_supernode(
        self,
        index: int,
        key: Path,
        *,
        partition_id: int | None = None,
        max_wait_s: int = 60,
    ) -> ManagedProcess:
        """Start SuperNode ``index`` authenticating with ``key`` (no wait); warm: and
        its worker."""
        tls = self._tls()
        pid = index if partition_id is None else partition_id
        runtime_port = free_port()
        common = [
            "--root-certificates",
            str(tls.ca_cert),
            "--superlink",
            f"{HOST}:{self.port}",
            "--host",
            HOST,
            "--port",
            str(runtime_port),
            "--auth-supernode-private-key",
            str(key),
            "--node-config",
            f"partition-id={pid} num-partitions={self.num_nodes}",
            "--max-wait-time",
            str(max_wait_s),
        ]
        home = self.state / f"node-{index}-home"
        if not self.warm:
            return self._spawn(
                f"supernode-{index}", ["flower-supernode", *common], home
            )
        secret = self.state / "keys" / f"supernode-{index}.superexec-secret"
        write_private(secret, os.urandom(32))
        node = self._spawn(
            f"supernode-{index}",
            [
                sys.executable,
                "-m",
                "deploy.supernode",
                *common,
                "--isolation",
                "process",
                "--superexec-auth-secret-file",
                str(secret),
            ],
            home,
            extra_env={ENV_POLL: str(self.node_poll_s), "PYTHONPATH": str(ROOT)},
        )
        worker = self._spawn(
            f"clientapp-worker-{index}",
            [
                sys.executable,
                "-m",
                "deploy.warm_clientapp",
                "--runtime-api-address",
                f"{HOST}:{runtime_port}",
                "--insecure",
                "--superexec-auth-secret-file",
                str(secret),
                "--timings",
                str(self.logs / f"clientapp-worker-{index}.timings.jsonl"),
                "--node-pid",
                str(node.pid),
                *[arg for module in WORKER_PRELOAD for arg in ("--preload", module)],
            ],
            # one torch thread per worker, as Ray gives each simulated client
            # (client_cpus=1): ten workers with a thread per core each would
            # oversubscribe the machine
            home,
            extra_env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        )
        self.workers.append(worker)
        return node

    def _tls(self) -> TlsFiles:
        if self.tls is None:
            raise RuntimeError("LocalDeployment.start() writes the certificates first")
        return self.tls

    def wait_nodes_online(self, count: int) -> None:
        def online() -> bool:
            for node in [*self.nodes, *self.workers]:
                _raise_if_dead(node)
            return self.cli.nodes_online() >= count

        wait_until(online, self.start_timeout_s, f"{count} SuperNodes online")

    def _spawn(
        self,
        name: str,
        argv: list[str],
        home: Path,
        extra_env: dict[str, str] | None = None,
    ) -> ManagedProcess:
        home.mkdir(parents=True, exist_ok=True)
        proc = ManagedProcess(
            name,
            argv,
            self.logs / f"{name}.log",
            flower_env(home, extra_env),
            cwd=self.state,
        )
        self.processes.append(proc)
        self.started_pids.append(proc.pid)
        return proc

    # ------------------------------------------------------------------ run
    def run(
        self,
        overrides: str,
        run_dir: str | Path,
        *,
        app: str | Path = ROOT,
        timeout_s: float = 900.0,
    ) -> RunOutcome:
        """Run the app with these Hydra overrides; return the outcome or raise
        :class:`DeployFailed`."""
        run_dir = Path(run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "summary.json").unlink(missing_ok=True)
        if "'" in overrides:
            raise ValueError(
                f"overrides={overrides!r} must not contain single quotes (use double "
                "quotes)"
            )
        # pin the run to the nodes this deployment registered: a node that someone else
        # registers through the Control API (it has no authentication in flwr 1.42) is
        # never sampled
        pinned = ",".join(str(n) for n in self.node_ids)
        full = (
            f"simulation.num_clients={self.num_nodes} "
            f"+simulation.node_ids=[{pinned}] {overrides}"
        ).strip()
        run_config = f"overrides='{full}' run-dir='{run_dir}'"
        log_path = run_dir / "flwr_run.log"
        start = time.monotonic()
        code, output = self.cli.run_stream(Path(app), run_config, log_path, timeout_s)
        wall = time.monotonic() - start
        match = RUN_STARTED.search(output)
        if match is None:
            raise DeployFailed(
                f"flwr run did not start a run (exit {code}); output in "
                f"{log_path}:\n{output[-2000:]}"
            )
        run_id = match.group(1)
        if code is None:
            self.cli.stop_run(run_id)
        try:
            info = self.cli.wait_finished(run_id, timeout_s=60.0)
        except (TimeoutError, RuntimeError) as exc:
            info = {"status": "unknown", "status-details": str(exc)}
        status, details = (
            str(info.get("status", "unknown")),
            str(info.get("status-details", "")),
        )
        self.collect_logs(run_dir)
        summary_path = run_dir / "summary.json"
        summary = (
            json.loads(summary_path.read_text()) if summary_path.exists() else None
        )
        outcome = RunOutcome(
            run_id, status, details, run_dir, summary, wall, log_path, extra=info
        )
        if code is None:
            raise DeployFailed(
                f"run {run_id} did not finish within {timeout_s:.0f} s and was "
                f"stopped; see {log_path}"
            )
        if status != "finished:completed":
            reason = (
                (summary or {}).get("reason")
                or last_exception(log_path.read_text(errors="replace"))
                or details
            )
            raise DeployFailed(
                f"run {run_id} ended with status {status}: {reason}; see {log_path}"
            )
        if not summary or summary.get("status") != "ok":
            raise DeployFailed(
                f"run {run_id} completed but {summary_path} says {summary!r}"
            )
        return outcome

    def collect_logs(self, run_dir: Path) -> None:
        """Copy every process log into ``run_dir/deploy-logs``."""
        dest = run_dir / "deploy-logs"
        dest.mkdir(parents=True, exist_ok=True)
        for proc in self.processes:
            if proc.log_path.exists():
                shutil.copyfile(proc.log_path, dest / proc.log_path.name)
        for timings in self.logs.glob("*.timings.jsonl"):
            shutil.copyfile(timings, dest / timings.name)

    def peak_rss_mb(self) -> dict[str, float]:
        """Peak resident memory (``VmHWM``, MB) of each running process, descendants
        included."""
        return tree_mb(self.processes, peak_rss_kb)

    def pss_mb(self) -> dict[str, float]:
        """Proportional set size now (MB) of each running process, descendants included:
        the shared pages (torch's libraries) are split among the processes that map
        them, so unlike :meth:`peak_rss_mb` the figures add up to what the deployment
        holds."""
        return tree_mb(self.processes, pss_kb)

    # ----------------------------------------------------------------- stop
    def stop(self) -> None:
        """Stop every process started (newest first), children included."""
        while self.processes:
            proc = self.processes.pop()
            try:
                proc.stop()
            except Exception:  # keep stopping the others
                logger.exception("could not stop %s (pid %d)", proc.name, proc.pid)
        self.nodes = []
        self.workers = []
        self.superlink = None


def _raise_if_dead(proc: ManagedProcess) -> bool:
    if not proc.running():
        raise DeployFailed(
            f"{proc.name} exited with code {proc.popen.returncode}; log "
            f"{proc.log_path}:\n{proc.log_text()[-2000:]}"
        )
    return False
