"""A real deployment on loopback: a SuperLink with TLS and SuperNode authentication, three
SuperNodes with their own key, CSV data file and ledger directory, runs submitted with
``python -m experiments.run federation=deployment``. Every process is stopped by PID in the
fixture's finalizer, and the test fails if any Flower process outlives it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import psutil
import pytest
from e2e_cli import REPO

from experiments.local_deployment import LocalDeployment
from experiments.processes.certs import make_node_key
from experiments.processes.launcher import processes_in_home, stop_process_tree
from experiments.processes.superlink import list_nodes
from experiments.processes.supernode import NodeSpec, SuperNode

RUN_TIMEOUT = 900


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    root = tmp_path_factory.mktemp("deployment")
    try:
        # the operator of these test nodes also allows privacy=none (the killed-node test)
        with LocalDeployment(
            root, nodes=3, fmt="csv", privacy_modes="dpsgd,functional,none"
        ) as dep:
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
        try:
            node.start()
        except RuntimeError as err:
            # refused before its local Runtime API port was seen open: the code is in the error
            found = re.search(r"exited with code (-?\d+)", str(err))
            assert found, err
            code = int(found.group(1))
        else:
            assert node.proc is not None
            code = node.proc.wait(timeout=120)
    finally:
        node.stop()
    assert code != 0
    assert "Failed to activate SuperNode" in node.log_text()
    nodes = list_nodes(deployment.superlink.cli())
    assert len(nodes) == 3  # only the three registered keys


def test_tls_auth_run_and_restarted_node_keeps_its_ledger(
    deployment: LocalDeployment, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    ledgers = [deployment.node_spec(i).ledger_dir / f"client-{i}.json" for i in range(3)]
    proc = _submit(
        deployment,
        out,
        "privacy=dpsgd",
        "privacy.target_epsilon=4",
        "federation.rounds=3",
        # a round samples the nodes connected then, at least min_replies of them: waiting for
        # all three makes the next round wait for the restarted node
        "federation.min_replies=3",
    )
    try:
        # Restart the first node done with round 1, once its reply is sent. Usually the
        # others are still training, so the restart falls between its rounds; on a loaded
        # machine round 2 may already have reached it, and then it fails that round. Either
        # way it must rejoin, keep its ledger and train in round 3.
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
    assert "round   3/3" in output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 3
    metrics = pd.read_csv(out / "metrics.csv")
    assert (metrics["participants"].iloc[1:] >= 2).all(), output
    clients = pd.read_csv(out / "clients.csv")
    trained = clients[clients["status"] == "trained"]
    # every node, the restarted one included, trains in the last round
    assert sorted(trained.loc[trained["round"] == 3, "partition_id"]) == [0, 1, 2], output
    # at most the restarted node's one interrupted round failed, and it is counted once
    assert len(clients) - len(trained) <= 1, clients.to_string()
    final = {}
    for pid, rows in trained.groupby("partition_id"):
        eps = rows.sort_values("round")["epsilon"].to_numpy()
        assert (eps[1:] > eps[:-1]).all()  # cumulative, never reset by the restart
        # the ledger on the node's own disk holds one event per round it trained
        assert _events(ledgers[int(pid)]) == len(rows)
        final[int(pid)] = (len(rows), eps[-1])
    # nodes that trained as many rounds report the same epsilon: the restart lost nothing
    for pid, (n, eps_last) in final.items():
        for other, (m, other_eps) in final.items():
            if m == n:
                assert eps_last == pytest.approx(other_eps, rel=1e-9), (pid, other)
    assert max(e for _, e in final.values()) <= 4.0


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


def test_personal_models_stay_on_the_nodes(deployment: LocalDeployment, tmp_path: Path) -> None:
    out = tmp_path / "run"
    ledgers = [deployment.node_spec(i).ledger_dir / f"client-{i}.json" for i in range(3)]
    before = [_events(p) for p in ledgers]
    proc = _submit(
        deployment,
        out,
        "privacy=dpsgd",
        # after the runs above a node may decline this budget: the ledger check below counts
        # the rounds each node did train
        "privacy.target_epsilon=2",
        "federation.rounds=1",
        "federation.min_replies=3",
        "personalization=finetune",
        "personalization.epochs=2",
    )
    output = _finish(proc)
    assert proc.returncode == 0, output
    assert "personal: 3 of 3 nodes fine-tuned" in output, output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["personalised_nodes"] == 3 and summary["personalisation_asked"] == 3
    run_id = summary["run_id"]
    assert not (out / "personal.csv").exists()  # the server's directory gets no accuracy
    clients = pd.read_csv(out / "clients.csv")
    trained = clients[clients["status"] == "trained"]["partition_id"].value_counts()
    for i, ledger in enumerate(ledgers):
        kept = ledger.parent.parent / "personal"
        table = pd.read_csv(kept / f"personal-run-{run_id}.csv")
        assert list(table["partition_id"]) == [i]
        assert 0.0 <= float(table["personal_accuracy"].iloc[0]) <= 1.0
        assert (kept / f"personal-model-run-{run_id}.npz").exists()
        # the rounds it trained spent budget; the fine-tuning added no event to the ledger
        assert _events(ledger) == before[i] + int(trained.get(i, 0))
