"""End-to-end deployment: a real SuperLink and 2 SuperNodes on 127.0.0.1, TLS + node
auth.

Real processes (``flower-superlink``, ``flower-supernode``, ``flwr``), started and
stopped by :class:`deploy.local.LocalDeployment`. One deployment serves all tests of
this module; its finalizer stops every process even when a test fails, and the last test
checks that nothing it started is left running.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import metrics_rows

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


from deploy.flwrcli import wait_until  # noqa: E402
from deploy.local import LocalDeployment  # noqa: E402
from deploy.outcome import DeployFailed  # noqa: E402
from deploy.outcome import last_exception  # noqa: E402
from deploy.pki import make_node_key  # noqa: E402
from deploy.pki import make_tls  # noqa: E402
from deploy.processes import ManagedProcess  # noqa: E402
from deploy.processes import alive  # noqa: E402
from deploy.processes import descendants  # noqa: E402
from deploy.processes import flower_env  # noqa: E402

pytestmark = pytest.mark.deploy

NUM_NODES = 2
NUM_ROUNDS = 2
# The S1 method on digits: top-k sparse uploads with error feedback + KL-weighted
# aggregation.
COMPRESSED_KL = (
    "dataset=digits partition=dirichlet client=topk client.alpha=0.1 "
    "strategy=kl_weighted"
)
RUN_TIMEOUT_S = 420.0


# --------------------------------------------------------- certificates and keys (fast)
def test_server_certificate_is_signed_by_ca_for_loopback_and_extra_hosts(
    tmp_path: Path,
) -> None:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    tls = make_tls(tmp_path, hosts=["superlink.lab.example", "10.0.0.5"])
    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.0.0.5"),
    }
    assert set(san.get_values_for_type(x509.DNSName)) == {
        "localhost",
        "superlink.lab.example",
    }
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # private key not readable by others
    assert tls.server_key.stat().st_mode & 0o077 == 0
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    with pytest.raises(ValueError, match="days=0"):
        make_tls(tmp_path / "x", days=0)


def test_node_keys_are_ecdsa_openssh_as_flower_expects(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private, public = make_node_key(tmp_path / "sn0")
    assert public.name == "sn0.pub"
    # what `flwr supernode register` does
    pub = serialization.load_ssh_public_key(public.read_bytes())
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp384r1"
    key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    assert key.public_key().public_numbers() == pub.public_numbers()
    assert private.stat().st_mode & 0o077 == 0


def test_last_exception_finds_the_serverapp_error() -> None:
    log = (
        "INFO x\nTraceback (most recent call last):\n  File ...\nValueError: a=1 is "
        "bad\nERROR Exit Code: 201\n"
    )
    assert last_exception(log) == "ValueError: a=1 is bad"
    assert last_exception("nothing here") == ""


def test_stop_tree_stops_children_and_kills_what_ignores_sigterm(
    tmp_path: Path,
) -> None:
    polite = ManagedProcess(
        "polite",
        ["bash", "-c", "sleep 300 & sleep 300; wait"],
        tmp_path / "a.log",
        flower_env(),
    )
    stubborn = ManagedProcess(
        "stubborn",
        ["bash", "-c", "trap '' TERM; sleep 300; true"],
        tmp_path / "b.log",
        flower_env(),
    )
    try:
        wait_until(
            lambda: (
                len(descendants(polite.pid)) == 2
                and len(descendants(stubborn.pid)) == 1
            ),
            30,
            "children",
        )
        trees = [[p.pid, *descendants(p.pid)] for p in (polite, stubborn)]
        assert polite.stop(timeout_s=20) == []  # SIGTERM was enough
        # needed SIGKILL
        assert sorted(stubborn.stop(timeout_s=1.0)) == sorted(trees[1])
        assert not any(alive(pid) for tree in trees for pid in tree)
    finally:
        for proc in (polite, stubborn):
            if proc.running():
                proc.stop(timeout_s=1.0)


# ------------------------------------------------------------------ the real deployment
@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory):
    dep = LocalDeployment(
        num_nodes=NUM_NODES, state_dir=tmp_path_factory.mktemp("deploy-state")
    )
    try:
        dep.start()
        yield dep
    finally:  # also when start() or a test failed
        dep.stop()


def test_tls_material_and_auth_flags(deployment: LocalDeployment) -> None:
    assert deployment.tls is not None
    ca = deployment.tls.ca_cert.read_text()
    assert "BEGIN CERTIFICATE" in ca
    pubs = sorted(p.name for p in (deployment.state / "keys").glob("*.pub"))
    assert pubs == [f"supernode-{i}.pub" for i in range(NUM_NODES)]
    assert (
        (deployment.state / "keys" / "supernode-0.pub")
        .read_text()
        .startswith("ecdsa-sha2-nistp384 ")
    )
    superlink = deployment.superlink
    assert superlink is not None and "--enable-supernode-auth" in superlink.argv
    assert "--insecure" not in superlink.argv
    assert all(
        "--root-certificates" in n.argv and "--insecure" not in n.argv
        for n in deployment.nodes
    )
    assert deployment.cli.nodes_online() == NUM_NODES


def test_unregistered_supernode_is_refused(deployment: LocalDeployment) -> None:
    # a valid ECDSA key the SuperLink was never told about
    key = deployment.node_key("intruder")
    node = deployment.start_supernode(99, key, partition_id=0, max_wait_s=30)
    worker = deployment.workers.pop()  # its warm worker exits with it (--node-pid)
    code = node.wait(timeout_s=90)
    log = node.log_text()
    for proc in (node, worker):
        proc.stop()
        deployment.processes.remove(proc)
    assert code is not None, (
        f"the unregistered SuperNode is still running; log:\n{log[-2000:]}"
    )
    assert code != 0, log[-2000:]
    assert (
        "2004" in log or "Failed to activate" in log or "not registered" in log.lower()
    ), log[-2000:]
    assert deployment.cli.nodes_online() == NUM_NODES


def test_a_foreign_node_joins_but_is_never_sampled_and_crashes_are_error_replies(
    deployment: LocalDeployment, tmp_path: Path
) -> None:
    """Issue 30, class 11: flwr 1.42's Control API has no authentication, so anyone who
    can read ``ca.crt`` can register a key and join; the deployment pins each run to its
    own node ids."""
    key = deployment.node_key("joiner")
    # what an intruder can do
    joiner_id = int(deployment.cli.register(key.with_name(key.name + ".pub")))
    assert joiner_id not in deployment.node_ids
    node = deployment.start_supernode(98, key, partition_id=0)
    worker = deployment.workers[-1]
    timings = [
        deployment.logs / f"clientapp-worker-{i}.timings.jsonl"
        for i in range(NUM_NODES)
    ]
    before = [len(t.read_text().splitlines()) if t.exists() else 0 for t in timings]
    try:
        wait_until(
            lambda: deployment.cli.nodes_online() == NUM_NODES + 1,
            90,
            "the joiner online",
        )
        # the same run checks the warm workers' error path: fault.seed=1 with crash rate
        # 0.2 makes node 0 crash in round 2 and node 1 in round 3 (draws 0.14 and 0.07)
        outcome = deployment.run(
            "dataset=digits simulation.num_rounds=3 fault.crash_rate=0.2 fault.seed=1",
            tmp_path / "pinned",
            timeout_s=RUN_TIMEOUT_S,
        )
        rows = metrics_rows(outcome.run_dir)
        trained = [r for r in rows if r["round"] > 0]
        assert [(r["clients_ok"], r["clients_failed"]) for r in trained] == [
            (2, 0),
            (1, 1),
            (1, 1),
        ]
        assert (
            f"node {joiner_id} is connected but not in simulation.node_ids"
            in outcome.log_path.read_text()
        )
        joiner = deployment.logs / "clientapp-worker-98.timings.jsonl"
        assert not joiner.exists() or joiner.read_text() == "", "the joiner ran a task"
        # a ClientApp that raises is Flower's error reply; the warm worker goes on
        # serving
        statuses = [
            [json.loads(line)["status"] for line in t.read_text().splitlines()[n:]]
            for t, n in zip(timings, before, strict=True)
        ]
        assert statuses == [
            ["completed", "failed", "completed"],
            ["completed", "completed", "failed"],
        ]
        assert all(w.running() for w in deployment.workers[:NUM_NODES])
    finally:
        for proc in (worker, node):
            proc.stop()
            deployment.processes.remove(proc)
        deployment.workers.remove(worker)


def test_compressed_kl_weighted_run(
    deployment: LocalDeployment, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    outcome = deployment.run(
        f"{COMPRESSED_KL} simulation.num_rounds={NUM_ROUNDS}",
        run_dir,
        timeout_s=RUN_TIMEOUT_S,
    )
    assert outcome.status == "finished:completed"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["rounds"] == NUM_ROUNDS
    rows = metrics_rows(run_dir)
    trained = [r for r in rows if r["round"] > 0]
    assert len(trained) == NUM_ROUNDS
    assert all(
        r["clients_ok"] == NUM_NODES and r["clients_failed"] == 0 for r in trained
    ), trained
    # compressed: top-10% uploads are much smaller than the dense downloads
    assert all(0 < r["bytes_up"] < 0.5 * r["bytes_down"] for r in trained), trained
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["strategy"]["_target_"].endswith("KLWeightedFedAvg")
    assert cfg["client"]["_target_"].endswith("TopKClient")
    assert cfg["simulation"]["num_clients"] == NUM_NODES
    for name in (
        "final_model.npz",
        "curves.png",
        "flwr_run.log",
        "deploy-logs/superlink.log",
    ):
        assert (run_dir / name).is_file(), name


def test_async_sliding_window_run(deployment: LocalDeployment, tmp_path: Path) -> None:
    """``strategy=async`` (sliding window on the learners, the default) on the TLS
    SuperLink: each SuperNode keeps its window in ``context.state`` between its
    ``flwr-clientapp`` processes."""
    from async_checks import learner_scales
    from async_checks import update_log

    run_dir = tmp_path / "async"
    # a few tasks per node, so that windows fill
    budget = NUM_ROUNDS * NUM_NODES + NUM_NODES
    overrides = (
        f"dataset=digits strategy=async strategy.max_updates={budget} "
        "strategy.eval_every=2 "
        "strategy.plateau_window=0 strategy.window=4"
    )
    deployment.run(overrides, run_dir, timeout_s=RUN_TIMEOUT_S)
    rows = metrics_rows(run_dir)
    assert [r["updates"] for r in rows] == list(range(0, budget + 1, 2))
    # one version per applied update
    assert [r["version"] for r in rows] == [r["updates"] for r in rows]
    assert rows[-1]["stop_reason"] == f"update budget {budget} reached"
    assert all(
        isinstance(r["accuracy"], float) and isinstance(r["loss"], float) for r in rows
    )
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]
    trained = rows[1:]
    assert all(
        r["staleness_mean"] is not None and r["staleness_max"] is not None
        for r in trained
    )
    # both nodes always have a message in flight: the second reply of a pair is at least
    # 1 version stale
    assert max(r["staleness_max"] for r in trained) >= 1
    assert (
        sum(r["clients_failed"] for r in rows) == 0
        and sum(r["lr_scale_fallbacks"] for r in trained) == 0
    )
    log = update_log(rows)
    assert len(log) == budget and len({node for node, _, _ in log}) == NUM_NODES
    assert [tau for _, tau, _ in log] == [
        t for r in trained for _, t, _ in r["update_log"]
    ]
    # each learner's own window
    assert [s for *_, s in log] == pytest.approx(learner_scales(log, window=4))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["clients_ok"] >= budget
    cfg = json.loads((run_dir / "config.json").read_text())
    assert (
        cfg["strategy"]["policy"] == "sliding_window"
        and cfg["strategy"]["window_side"] == "learner"
    )


def test_failed_run_raises_with_reason(
    deployment: LocalDeployment, tmp_path: Path
) -> None:
    # the ServerApp refuses this config: the run ends "finished:failed" although
    # `flwr run` exits 0
    with pytest.raises(DeployFailed, match="finished:failed") as info:
        deployment.run(
            "dataset=digits simulation.round_timeout_s=-1",
            tmp_path / "bad",
            timeout_s=RUN_TIMEOUT_S,
        )
    assert "simulation.round_timeout_s=-1 is out of range (0, inf)" in str(info.value)


def test_everything_stopped(deployment: LocalDeployment) -> None:
    tree = [pid for p in deployment.processes for pid in (p.pid, *descendants(p.pid))]
    assert len(tree) > len(deployment.processes), "expected flower-superexec children"
    deployment.stop()
    assert deployment.processes == []
    # SuperLink + nodes (+ the refused intruder)
    assert len(deployment.started_pids) >= NUM_NODES + 1
    left = [pid for pid in [*tree, *deployment.started_pids] if alive(pid)]
    assert left == [], f"still running after stop(): {left}"
