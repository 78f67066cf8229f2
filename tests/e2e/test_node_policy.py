"""The node owns its budget and the control plane is closed, on a real TLS deployment.

Two SuperNodes dial the SuperLink through the Fleet-only nginx proxy (participants' side);
runs are submitted on the operator's side (the SuperLink's loopback port). Every process is
stopped by PID in the fixture's finalizer, and the test fails if any outlives it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from e2e_cli import REPO

from experiments.local_deployment import LocalDeployment
from experiments.processes.certs import make_node_key
from experiments.processes.launcher import processes_in_home, stop_process_tree
from experiments.processes.superlink import connect, register_node
from privacy.ledger_file import init_ledger

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
    reason="the participant proxy needs nginx (install.sh installs nginx-light)",
)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    root = tmp_path_factory.mktemp("policy")
    try:
        with LocalDeployment(root, nodes=2, max_epsilon=1.0, proxy=True, approve_fabs=True) as dep:
            yield dep
    finally:
        leftovers = processes_in_home(root)
        for proc in leftovers:
            stop_process_tree(proc, grace=5)
        assert not leftovers, f"processes left running: {[p.cmdline() for p in leftovers]}"


def _run(dep: LocalDeployment, out: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    assert dep.superlink is not None and dep.pki is not None
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.run",
            "federation=deployment",
            f"federation.superlink={dep.superlink.address}",  # the operator's side
            f"federation.root_certificates={dep.pki.ca_cert}",
            f"hydra.run.dir={out}",
            "dataset=digits",
            "federation.num_clients=2",
            "federation.rounds=1",
            "federation.round_timeout=120",
            *overrides,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _clients(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "clients.csv")


def _events(dep: LocalDeployment, i: int) -> int:
    path = dep.node_spec(i).ledger_dir / f"client-{i}.json"
    return len(json.loads(path.read_text())["events"]) if path.exists() else -1


def test_a_node_capped_at_1_declines_a_run_asking_for_2(deployment, tmp_path: Path) -> None:
    res = _run(deployment, tmp_path, "privacy.target_epsilon=2")
    assert res.returncode == 0, res.stdout + res.stderr
    clients = _clients(tmp_path)
    assert set(clients["status"]) == {"declined"}, clients
    assert clients["reason"].str.contains("caps epsilon at 1 over all runs").all()
    assert [_events(deployment, i) for i in range(2)] == [0, 0]


def test_a_dp_only_node_refuses_privacy_none(deployment, tmp_path: Path) -> None:
    res = _run(deployment, tmp_path, "privacy=none")
    assert res.returncode == 0, res.stdout + res.stderr
    clients = _clients(tmp_path)
    assert set(clients["status"]) == {"declined"}
    assert clients["reason"].str.contains("allows privacy.mode in").all()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final_test_accuracy"] < 0.2  # no raw weights ever left a node


def test_two_concurrent_runs_leave_every_release_in_the_ledgers(deployment, tmp_path: Path) -> None:
    assert deployment.superlink is not None and deployment.pki is not None
    args = [
        sys.executable,
        "-m",
        "experiments.run",
        "federation=deployment",
        f"federation.superlink={deployment.superlink.address}",
        f"federation.root_certificates={deployment.pki.ca_cert}",
        "dataset=digits",
        "federation.num_clients=2",
        "federation.rounds=1",
        "privacy.target_epsilon=0.45",
    ]
    procs = [
        subprocess.Popen(
            [*args, f"hydra.run.dir={tmp_path / f'run{i}'}"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text
    trained = sum(
        int((_clients(tmp_path / f"run{i}")["status"] == "trained").sum()) for i in range(2)
    )
    # every release of both runs is in the nodes' ledgers (none overwritten by the other run)
    assert trained >= 2
    assert sum(_events(deployment, i) for i in range(2)) == trained


def test_a_node_with_a_deleted_ledger_refuses_to_train(deployment, tmp_path: Path) -> None:
    ledger = deployment.node_spec(0).ledger_dir / "client-0.json"
    ledger.unlink()
    res = _run(deployment, tmp_path, "privacy.target_epsilon=0.2")
    assert res.returncode == 0, res.stdout + res.stderr
    clients = _clients(tmp_path).set_index("partition_id")
    assert clients.loc[0, "status"] == "declined"
    assert "ledger is missing or lost events" in clients.loc[0, "reason"]
    assert not ledger.exists()  # nothing re-created behind the operator's back


def test_a_node_runs_only_an_app_its_operator_approved(deployment, tmp_path: Path) -> None:
    init_ledger(deployment.node_spec(0).ledger_dir, 0, force=True)  # after the test above
    deployment.node_overrides[1] = {"approved_fabs": ("0" * 64,)}  # not this checkout's app
    deployment.nodes[1].stop()
    deployment.start_node(1)
    try:
        res = _run(
            deployment, tmp_path, "privacy.target_epsilon=0.2", "federation.round_timeout=40"
        )
    finally:
        deployment.node_overrides.pop(1)
        deployment.nodes[1].stop()
        deployment.start_node(1)
    assert res.returncode == 0, res.stdout + res.stderr
    clients = _clients(tmp_path).set_index("partition_id")
    assert clients.loc[0, "status"] == "trained"  # node 0 approved this very app
    assert (clients["status"] == "trained").sum() == 1  # node 1 never ran it
    log = (deployment.root / "node-1" / "superexec.log").read_text()
    assert "is not approved on this node" in log


def test_the_participants_side_can_neither_submit_a_run_nor_register_a_key(
    deployment, tmp_path: Path
) -> None:
    assert deployment.proxy is not None and deployment.pki is not None
    participant = connect(deployment.proxy.address, deployment.pki.ca_cert, tmp_path / "cli")
    key = tmp_path / "intruder"
    make_node_key(key, tmp_path / "intruder.pub")
    with pytest.raises(RuntimeError):
        register_node(participant, tmp_path / "intruder.pub")
    with pytest.raises(RuntimeError):
        participant.submit({"num-rounds": 1})
    log = (deployment.proxy.workdir / "access.log").read_text()
    assert " 403 " in log  # the proxy, not a network error, refused them
    # the operator's side (the SuperLink's own loopback port) can
    operator = deployment.superlink.cli(tmp_path / "op") if deployment.superlink else None
    assert operator is not None
    assert register_node(operator, tmp_path / "intruder.pub") > 0
