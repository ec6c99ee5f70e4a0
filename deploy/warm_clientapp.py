"""A warm ClientApp worker for a SuperNode started with ``--isolation process``.

Flower 1.42's SuperNode, in its default ``--isolation subprocess`` mode, starts a
``flower-superexec`` that launches a fresh ``flwr-clientapp`` process for *every*
message: each one imports flwr and torch, loads the data and takes torch's first
optimizer step before it trains (measured in ``benchmarks/RESULTS.md``, "Deployed
ClientApp start-up"). Flower's warm executor
(``supercore/superexec/executor/warm_executor*.py``) exists for the Kubernetes executor
only, and ``flwr-clientapp`` serves one task per process.

This worker takes the place of ``flower-superexec`` beside one SuperNode started with
``--isolation process``: it polls the SuperNode's Runtime API for ClientApp tasks
(``AcquireTask``, as ``flower-superexec`` does) and runs each one *in this process*,
with the same steps as Flower's ``run_clientapp`` (pull the message, context, run and
FAB; install the FAB once per hash; load the ClientApp once per FAB; call it; push the
reply and the context; push the task's final status), so flwr, torch, the data and the
built ClientApp stay warm between messages. Tasks run one at a time, in the order the
SuperNode hands them out.

What it does not do (say so where it is used): no per-task process isolation (a
ClientApp's module state survives between its messages, which is the point; only FABs
you trust should run in it, the same trust ``flwr-clientapp`` needs); no runtime
dependency installation (refused at start); a task that raises is answered with Flower's
error reply and the worker goes on; a worker that dies takes its node's in-flight task
with it (the SuperLink's task expiry applies, as for a crashed ``flwr-clientapp``). With
``--superexec-auth-secret-file`` (give the same file to the SuperNode) only holders of
the secret can acquire the node's tasks.

Run (``deploy/local.py`` starts one per SuperNode)::

    python -m deploy.warm_clientapp --runtime-api-address 127.0.0.1:9094 --insecure
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from logging import DEBUG
from logging import ERROR
from logging import INFO
from logging import WARNING
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the `deploy` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.runtime_pull import pull_task_input  # noqa: E402

logger = logging.getLogger("bouquet.deploy.warm")

DEFAULT_POLL_S = (
    0.25  # longest pause between AcquireTask calls while the node has no task
)
MIN_POLL_S = 0.02  # the first pause after a task; doubles while idle, up to poll_s


def _flower_log(level: int, msg: str, *args: Any) -> None:
    from flwr.common.logger import log

    log(level, msg, *args)


class WarmClientAppWorker:
    """Acquire ClientApp tasks from one SuperNode's Runtime API and run them in this
    process.

    Parameters
    ----------
    runtime_api_address : str
        ``host:port`` of the SuperNode's Runtime API (its ``--host``/``--port``).
    insecure : bool
        Talk plain HTTP to the Runtime API (Flower's default for a local SuperNode).
    root_certificates : bytes, optional
        PEM CA for an HTTPS Runtime API.
    auth_secret : bytes, optional
        The SuperNode's ``--superexec-auth-secret-file`` contents.
    poll_s : float
        Longest pause between ``AcquireTask`` calls while idle (the first after a task
        is ``MIN_POLL_S``, doubling).
    timings_path : path, optional
        Append one JSON line per task: seconds spent pulling the task input, loading the
        app, in the app, pushing the reply and the task output (for
        benchmarks/bench_deploy.py).
    """

    def __init__(
        self,
        runtime_api_address: str,
        *,
        insecure: bool = True,
        root_certificates: bytes | None = None,
        auth_secret: bytes | None = None,
        poll_s: float = DEFAULT_POLL_S,
        timings_path: str | Path | None = None,
    ) -> None:
        if not 0.001 <= poll_s <= 60:
            raise ValueError(f"poll_s={poll_s} must be in [0.001, 60] seconds")
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
        from flwr.supercore.interceptors import SuperExecAuthHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        self.address = runtime_api_address
        self.insecure = insecure
        self.root_certificates = root_certificates
        self.poll_s = poll_s
        self.timings_path = Path(timings_path) if timings_path else None
        self.tasks_done = 0
        self.tasks_failed = 0
        self._installed: set[str] = set()  # FAB hashes installed by this process
        interceptors: list[Any] = [
            RuntimeVersionHttpInterceptor(component_name="SuperExec")
        ]
        if auth_secret:
            interceptors.append(
                SuperExecAuthHttpInterceptor(
                    master_secret=auth_secret,
                    protected_methods=frozenset({"/flwr.proto.Runtime/AcquireTask"}),
                )
            )
        self.client = RuntimeHttpClient.from_server_address(
            server_address=runtime_api_address,
            insecure=insecure,
            root_certificates=root_certificates,
            interceptors=interceptors,
            retry_invoker=make_simple_http_retry_invoker(),
        )

    def close(self) -> None:
        self.client.close()

    def acquire(self) -> tuple[str, Any] | None:
        """One ``AcquireTask``: ``(token, task)`` of a ClientApp task, or None."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
        from flwr.supercore.constant import TaskType

        res = self.client.AcquireTask(
            AcquireTaskRequest(
                supported_task_types=[TaskType.CLIENT_APP.value], agentapp_fab_hashes=[]
            )
        )
        if res.HasField("task") and res.token:
            return res.token, res.task
        return None

    def serve(
        self, max_tasks: int | None = None, idle_exit_s: float | None = None
    ) -> int:
        """Run tasks until stopped (or ``max_tasks`` done, or idle for ``idle_exit_s``);
        return the count."""
        idle_since = time.monotonic()
        pause = MIN_POLL_S
        while max_tasks is None or self.tasks_done + self.tasks_failed < max_tasks:
            got = self.acquire()
            if got is None:
                if (
                    idle_exit_s is not None
                    and time.monotonic() - idle_since > idle_exit_s
                ):
                    break
                time.sleep(pause)
                pause = min(2 * pause, self.poll_s)
                continue
            token, _task = got
            ok = self.run_task(token)
            self.tasks_done += ok
            self.tasks_failed += not ok
            idle_since = time.monotonic()
            pause = MIN_POLL_S
        return self.tasks_done + self.tasks_failed

    def run_task(self, token: str) -> bool:
        """Flower's ``run_clientapp`` steps for one task, in this process; True if the
        app replied."""
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.clientapp.client_app import LoadClientAppError
        from flwr.common.constant import ErrorCode
        from flwr.common.constant import SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender
        from flwr.supercore.heartbeat import make_task_heartbeat_fn_http
        from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient
        from flwr.supernode.runtime.run_clientapp import push_message
        from flwr.supernode.runtime.run_clientapp import push_task_output

        retry = make_simple_http_retry_invoker()
        client = RuntimeHttpClient.from_server_address(
            server_address=self.address,
            insecure=self.insecure,
            root_certificates=self.root_certificates,
            interceptors=[
                RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                RuntimeTokenHttpInterceptor(token),
            ],
            retry_invoker=retry,
        )
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        message = reply = context = None
        status, details = (
            SubStatus.FAILED,
            "ClientApp task failed due to unknown reason",
        )
        start = time.perf_counter()
        stages: dict[str, float] = {}

        def mark(name: str) -> None:
            stages[name] = round(time.perf_counter() - start - sum(stages.values()), 4)

        try:
            heartbeat.start()
            message, context, run, fab = pull_task_input(client)
            mark("pull task input")
            app = self._client_app(run, fab)
            mark("install + load app")
            reply = app(message=message, context=context)
            mark("ClientApp call")
            status, details = SubStatus.COMPLETED, ""
        except Exception as ex:  # the same error reply as flwr-clientapp's
            code = (
                ErrorCode.LOAD_CLIENT_APP_EXCEPTION
                if isinstance(ex, LoadClientAppError)
                else ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            )
            reason = (
                "An exception was raised when attempting to load `ClientApp`"
                if isinstance(ex, LoadClientAppError)
                else f"{type(ex)}:<'{ex}'>"
            )
            _flower_log(ERROR, "ClientApp raised an exception (warm worker)")
            logger.exception("task failed")
            details = reason
            if message is not None:
                reply = Message(Error(code=code, reason=reason), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            except Exception:  # noqa: BLE001 - the node's task expiry applies, as for flwr-clientapp
                logger.exception("could not push the reply")
                status = SubStatus.FAILED
            mark("push reply")
            retry.max_tries = 1
            # Flower's own push_task_output logs HTTP errors; anything else must not end
            # the worker
            try:
                push_task_output(
                    client=client, context=context, sub_status=status, details=details
                )
            except Exception:  # noqa: BLE001
                logger.exception("could not push the task output")
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()
            mark("push task output")
        total = time.perf_counter() - start
        _flower_log(DEBUG, "warm worker: task done in %.3f s (%s)", total, status)
        if self.timings_path is not None:
            with self.timings_path.open("a") as fh:
                fh.write(
                    json.dumps(
                        {"status": str(status), "total": round(total, 4), **stages}
                    )
                    + "\n"
                )
        return status == SubStatus.COMPLETED

    def _client_app(self, run: Any, fab: Any) -> Any:
        """Install the FAB once per hash, load its ClientApp (Flower caches the module
        import)."""
        from flwr.cli.install import install_from_fab
        from flwr.clientapp.utils import get_load_client_app_fn

        if fab.hash_str not in self._installed:
            install_from_fab(fab.content, skip_prompt=True)
            self._installed.add(fab.hash_str)
        load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        return load(run.fab_id, run.fab_version, fab.hash_str)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runtime-api-address",
        required=True,
        help="the SuperNode's Runtime API, host:port",
    )
    parser.add_argument(
        "--insecure", action="store_true", help="plain HTTP to the Runtime API"
    )
    parser.add_argument(
        "--root-certificates", default=None, help="PEM CA of an HTTPS Runtime API"
    )
    parser.add_argument(
        "--superexec-auth-secret-file",
        default=None,
        help="the SuperNode's SuperExec secret",
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=DEFAULT_POLL_S,
        help="seconds between polls when idle",
    )
    parser.add_argument(
        "--timings",
        default=None,
        help="append one JSON line of stage seconds per task here",
    )
    parser.add_argument(
        "--node-pid",
        type=int,
        default=None,
        help="exit when this process (the SuperNode) is gone",
    )
    parser.add_argument(
        "--preload",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module before serving (repeatable), so the first task does "
        "not pay it",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    if os.environ.get("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "") not in (
        "1",
        "true",
        "True",
    ):
        _flower_log(
            WARNING,
            "warm worker: runtime dependency installation is not supported; apps run "
            "with this interpreter's packages",
        )
    if args.insecure == (args.root_certificates is not None):
        parser.error("give exactly one of --insecure and --root-certificates")
    if args.node_pid is not None:
        from flwr.supercore.app_utils import start_parent_process_monitor

        # SIGINT to this process when the node exits
        start_parent_process_monitor(args.node_pid)
    for module in args.preload:
        start = time.perf_counter()
        importlib.import_module(module)
        _flower_log(
            INFO,
            "warm worker: preloaded %s in %.2f s",
            module,
            time.perf_counter() - start,
        )
    certs = (
        Path(args.root_certificates).read_bytes() if args.root_certificates else None
    )
    secret = (
        Path(args.superexec_auth_secret_file).read_bytes()
        if args.superexec_auth_secret_file
        else None
    )
    worker = WarmClientAppWorker(
        args.runtime_api_address,
        insecure=args.insecure,
        root_certificates=certs,
        auth_secret=secret,
        poll_s=args.poll,
        timings_path=args.timings,
    )
    _flower_log(
        INFO,
        "warm ClientApp worker serving %s (poll %.3f s)",
        args.runtime_api_address,
        args.poll,
    )
    try:
        worker.serve()
    except KeyboardInterrupt:
        pass
    finally:
        worker.close()
        _flower_log(
            INFO,
            "warm worker: %d tasks done, %d failed",
            worker.tasks_done,
            worker.tasks_failed,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
