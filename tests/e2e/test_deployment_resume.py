"""Deployment variant of resume: the server side (SuperLink, ServerApp, the submitting
``experiments.run``) is killed with SIGKILL after round 2 of 4, the SuperLink restarts on its
state database (registered nodes kept), the SuperNodes reconnect on their own, and
``resume=<run dir>`` runs rounds 3 and 4. Every process is stopped by PID in the finalizer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pandas as pd
import pytest
from e2e_cli import REPO, rounds_in

from experiments.local_deployment import LocalDeployment
from experiments.processes.launcher import processes_in_home, stop_process_tree


def test_server_killed_after_round_2_of_4_resumes_on_the_same_nodes(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("deploy-resume")
    out = root / "run"
    try:
        with LocalDeployment(root, nodes=3) as dep:
            assert dep.superlink is not None and dep.pki is not None
            log = open(root / "first.log", "w")  # noqa: SIM115
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "experiments.run",
                    "federation=deployment",
                    f"federation.superlink={dep.superlink.address}",
                    f"federation.root_certificates={dep.pki.ca_cert}",
                    f"hydra.run.dir={out}",
                    "dataset=digits",
                    "privacy=dpsgd",
                    "privacy.target_epsilon=4",
                    "federation.rounds=4",
                    "federation.fraction_evaluate=0",
                ],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                deadline = time.monotonic() + 900
                while 2 not in rounds_in(out / "metrics.csv"):
                    assert proc.poll() is None, (root / "first.log").read_text()
                    assert time.monotonic() < deadline, "round 2 did not finish in time"
                    time.sleep(0.2)
                dep.superlink.kill()  # the server machine crashes
            finally:
                stop_process_tree(proc, grace=0)
                log.close()
            assert rounds_in(out / "metrics.csv")[-1] in (2, 3)
            dep.superlink.start()
            res = subprocess.run(
                [sys.executable, "-m", "experiments.run", f"resume={out}"],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            assert res.returncode == 0, res.stdout + res.stderr
    finally:
        leftovers = processes_in_home(root)
        for p in leftovers:
            stop_process_tree(p, grace=5)
        assert not leftovers, f"processes left running: {[p.cmdline() for p in leftovers]}"
    assert rounds_in(out / "metrics.csv") == [0, 1, 2, 3, 4]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 4
    clients = pd.read_csv(out / "clients.csv")
    assert not clients.duplicated(["round", "partition_id"]).any()
    assert sorted(set(clients["round"])) == [1, 2, 3, 4]
    # the nodes' ledgers (on their disks) never exceed the budget, whatever was replayed
    eps = clients.loc[clients["status"] == "trained", "epsilon"]
    assert eps.max() <= 4.0
