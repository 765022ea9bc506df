"""Two controller replicas against one fake cluster: only the holder of the Lease acts, and when it
stops the other takes over."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from controller.leader import LEASE_NAME, LeaderElector
from harness.fake_apiserver import FakeApiServer
from harness.fake_kuberay import FakeKubeRay
from tests.controller.cluster import Cluster, Controller, install_crds
from tests.controller.test_controller import WATCH_SECONDS, adapter, inference_workspace, ready


def holder(cluster: Cluster) -> str | None:
    lease = cluster.server.get("leases", "default", LEASE_NAME)
    return None if lease is None else (lease.get("spec") or {}).get("holderIdentity")


def pid_of(identity: str | None) -> int | None:
    # `<hostname>_<pid>_<suffix>` (`controller.leader.identity`).
    return int(identity.rsplit("_", 2)[1]) if identity else None


def writes(cluster: Cluster, namespace: str) -> list[tuple[str, str, int]]:
    """Writes in `namespace` to what only the controller writes (and Services, which KubeRay makes too)."""
    return [
        (r.verb, r.resource, r.code)
        for r in cluster.server.request_log
        if r.namespace == namespace
        and r.verb in ("create", "patch", "update", "delete")
        and r.resource in ("workspaces", "workspaces/status", "rayservices", "services")
    ]


def test_two_replicas_one_acts_and_the_other_takes_over(tmp_path: Path) -> None:
    with FakeApiServer() as server, server.api_client() as api:
        install_crds(server)
        with FakeKubeRay(api, watch_timeout_seconds=WATCH_SECONDS) as kuberay:
            cluster = Cluster(server, api, kuberay)
            kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
            replicas = [Controller(kubeconfig, tmp_path / f"controller-{n}.log").start() for n in range(2)]
            try:
                pids = {replica.process.pid: replica for replica in replicas if replica.process}
                cluster.wait("one replica to hold the Lease", lambda: pid_of(holder(cluster)) in pids)
                leader = pids[pid_of(holder(cluster)) or 0]
                (follower,) = [replica for replica in replicas if replica is not leader]
                cluster.controller = leader

                cluster.namespace("lead")
                cluster.gpu_node("lead-gpu-0", {"pool": "lead"})
                cluster.create_workspace(inference_workspace("lead", "ws", "lead"))
                cluster.wait_status("lead", "ws", ready, "Ready")
                done = writes(cluster, "lead")
                # One actor: each write once, and none lost to a race with another writer (no 409).
                assert [w for w in done if w[2] == 409] == []
                assert [w[:2] for w in done].count(("create", "rayservices")) == 1
                assert [w[:2] for w in done].count(("patch", "workspaces")) == 1  # the finalizer

                # The leader stops (and gives the Lease up); the follower acts on the next change.
                assert leader.stop() == 0
                cluster.controller = follower
                follower_pid = follower.process.pid if follower.process else None
                cluster.wait(
                    "the follower to hold the Lease", lambda: pid_of(holder(cluster)) == follower_pid
                )
                cluster.patch_workspace("lead", "ws", {"inference": {"adapters": [adapter("sql")]}})
                ws = cluster.wait_status("lead", "ws", ready, "Ready after the change, by the follower")
                assert ws["metadata"]["generation"] == 2
                rayservice: Any = cluster.rayservice("lead", "ws")
                assert "sql" in rayservice["spec"]["serveConfigV2"]
            finally:
                codes = [replica.stop() for replica in replicas]
            assert codes == [0, 0], [replica.output()[-3000:] for replica in replicas]
            assert kuberay.errors == []


def test_the_lease_goes_to_one_elector_until_released_or_expired() -> None:
    def ignore(leading: bool) -> None:
        pass  # `_try` rounds alone: `run` is what reports changes

    with FakeApiServer() as server, server.api_client() as api:
        first, second = (LeaderElector(api, "default", ignore, lease_seconds=1) for _ in range(2))
        assert first._try() is True
        assert second._try() is False  # held, and renewed just now
        assert first._try() is True  # renewing keeps it
        lease = server.get("leases", "default", LEASE_NAME)
        assert lease is not None and lease["spec"]["holderIdentity"] == first.identity
        assert lease["spec"]["leaseTransitions"] == 0

        first._release()
        assert second._try() is True  # released: free at once
        assert first._try() is False
        # The holder stops renewing: free once its record has stood still for the lease's duration,
        # as this elector's own clock measures it.
        assert first._try() is False
        time.sleep(1.1)
        assert first._try() is True
        lease = server.get("leases", "default", LEASE_NAME)
        assert lease is not None and lease["spec"]["holderIdentity"] == first.identity
        assert lease["spec"]["leaseTransitions"] == 2
