"""A real deployment on loopback: a SuperLink with TLS and SuperNode authentication, three
SuperNodes with their own key, CSV data file and ledger directory, runs submitted with
``python -m experiments.run federation=deployment``. Every process is stopped by PID in the
fixture's finalizer, and the test fails if any Flower process outlives it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import psutil
import pytest
from e2e_cli import REPO

from experiments.certs import make_node_key
from experiments.deploy import LocalDeployment
from experiments.deployment import NodeSpec, SuperNode, list_nodes
from experiments.launcher import processes_in_home, stop_process_tree

RUN_TIMEOUT = 900


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    root = tmp_path_factory.mktemp("deployment")
    try:
        with LocalDeployment(root, nodes=3, fmt="csv") as dep:
            yield dep
    finally:
        leftovers = processes_in_home(root)
        for proc in leftovers:
            stop_process_tree(proc, grace=5)
        assert not leftovers, f"processes left running: {[p.cmdline() for p in leftovers]}"


def _submit(dep: LocalDeployment, out: Path, *overrides: str) -> subprocess.Popen[str]:
    assert dep.superlink is not None and dep.pki is not None
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "experiments.run",
            "federation=deployment",
            f"federation.superlink={dep.superlink.address}",
            f"federation.root_certificates={dep.pki.ca_cert}",
            f"hydra.run.dir={out}",
            "dataset=digits",
            "federation.rounds=2",
            "federation.fraction_evaluate=0",
            *overrides,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen[str]) -> str:
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            stop_process_tree(proc, grace=5)
    return out


def _training(node: SuperNode) -> bool:
    """Whether a ClientApp process is running under this SuperNode."""
    assert node.proc is not None
    try:
        children = psutil.Process(node.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return False
    for child in children:
        try:
            if "clientapp" in " ".join(child.cmdline()):
                return True
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return False


def _events(ledger: Path) -> int:
    try:
        return len(json.loads(ledger.read_text())["events"])
    except (OSError, ValueError, KeyError):
        return 0


def _wait(
    cond: Callable[[], bool], proc: subprocess.Popen[str], what: str, timeout: float = 600
) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            text = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"run ended before {what}:\n{text}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_node_with_unregistered_key_is_refused(deployment: LocalDeployment, tmp_path: Path) -> None:
    assert deployment.superlink is not None and deployment.pki is not None
    key = tmp_path / "intruder"
    make_node_key(key, tmp_path / "intruder.pub")
    spec = NodeSpec(9, key, deployment.data[0], tmp_path / "ledger")
    node = SuperNode(
        tmp_path / "intruder-node", spec, deployment.superlink.address, deployment.pki.ca_cert
    )
    try:
        node.start()
        assert node.proc is not None
        code = node.proc.wait(timeout=120)
    finally:
        node.stop()
    assert code != 0
    assert "Failed to activate SuperNode" in node.log_text()
    nodes = list_nodes(deployment.superlink.cli())
    assert len(nodes) == 3  # only the three registered keys


def test_tls_auth_run_two_rounds_and_restarted_node_keeps_epsilon(
    deployment: LocalDeployment, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    ledgers = [deployment.node_spec(i).ledger_dir / f"client-{i}.json" for i in range(3)]
    proc = _submit(
        deployment,
        out,
        "privacy=dpsgd",
        "privacy.target_epsilon=4",
        # after round 1 the server samples the nodes connected then, at least min_replies of
        # them: waiting for all three makes round 2 wait for the restarted node
        "federation.min_replies=3",
    )
    try:
        # restart the first node done with round 1: its reply is sent, round 2 cannot have
        # started (the others are still training), so the restart falls between its rounds
        _wait(lambda: any(_events(p) == 1 for p in ledgers), proc, "a node's first round")
        first = next(i for i, p in enumerate(ledgers) if _events(p) == 1)
        node = deployment.nodes[first]
        _wait(lambda: not _training(node), proc, "the node's reply")
        time.sleep(1.0)
        old_pid = node.proc.pid if node.proc else -1
        node.stop()
        restarted = deployment.start_node(first)
        assert restarted.proc is not None and restarted.proc.pid != old_pid
    finally:
        output = _finish(proc)
    assert proc.returncode == 0, output
    assert "round   2/2" in output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 2
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["participants"].iloc[1:]) == [3, 3], output
    clients = pd.read_csv(out / "clients.csv")
    assert (clients["status"] == "trained").all()
    eps = clients.pivot(index="partition_id", columns="round", values="epsilon")
    # every node, the restarted one included, reports the cumulative epsilon of two rounds
    assert (eps[2] > eps[1]).all()
    assert eps[2].loc[first] == pytest.approx(eps[2].drop(first).iloc[0], rel=1e-9)
    assert eps[2].max() <= 4.0
    assert all(_events(p) == 2 for p in ledgers)  # on each node's disk, not the server's


def test_node_killed_during_a_round_run_completes_with_the_others(
    deployment: LocalDeployment, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    victim = deployment.nodes[2]
    proc = _submit(
        deployment,
        out,
        "privacy=none",  # the ledgers already hold the previous run's budget
        # Flower answers for a dead node ("Node Unavailable") once it has missed two 30 s
        # heartbeats, so round 1 ends after about a minute; the timeout is a backstop
        "federation.round_timeout=300",
    )
    try:
        _wait(lambda: _training(victim), proc, "node 2 to start training")
        victim.kill()
    finally:
        output = _finish(proc)
        deployment.start_node(2)  # leave the federation whole for any later test
    assert proc.returncode == 0, output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 2
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["participants"].iloc[1:]) == [2, 2], output
    assert int(metrics["failed"].iloc[1]) >= 1  # the dead node
    clients = pd.read_csv(out / "clients.csv")
    trained = clients[clients["status"] == "trained"]
    assert sorted(trained["partition_id"]) == [0, 0, 1, 1]  # the others, in both rounds
