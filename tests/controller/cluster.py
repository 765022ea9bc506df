"""A fake cluster for the controller tests: the fake API server with the Workspace and KubeRay CRDs,
the fake KubeRay operator, Ready GPU nodes for the `byo` provisioner, and the real controller
(`python -m kairay.cli controller`) as a subprocess that can be killed and started again."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client

from controller.manifests import manifests
from controller.settings import Settings
from controller.workloads import render_objects
from harness.fake_apiserver import FakeApiServer
from harness.fake_kuberay import FakeKubeRay, kuberay_crds
from kairay.api.crds import load_crd
from kairay.api.workspace import parse_workspace
from presets.sizing import InferencePlan
from presets.skus import GpuSku, get_sku

REPO = Path(__file__).resolve().parents[2]
RUNTIME_IMAGE = "registry.test/kairay-runtime:test"
SETTINGS = Settings(runtime_image=RUNTIME_IMAGE)
# Short, so that what is not event-driven (nodes, ConfigMaps) is picked up quickly.
RESYNC_SECONDS = 1.0
# Short, so that a restarted controller takes over a killed one's Lease quickly.
LEASE_SECONDS = 2.0
TIMEOUT = 25.0
GROUP, VERSION, PLURAL = "kaito.sh", "v1beta1", "workspaces"
A100 = "Standard_NC24ads_A100_v4"


def install_crds(server: FakeApiServer) -> None:
    """The Workspace CRD and KubeRay's, before anything watches them."""
    server.register_crd(load_crd())
    for crd in kuberay_crds():
        server.register_crd(crd)


# What the controller runs as: the ServiceAccount, and RBAC, of `kairay manifests`.
RBAC_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding")


def service_account_kubeconfig(server: FakeApiServer, path: Path) -> Path:
    """Install the Namespace, ServiceAccount, ClusterRole and ClusterRoleBinding `kairay manifests`
    ships, and write a kubeconfig with that ServiceAccount's token: a controller using it gets a
    403 for anything its ClusterRole does not grant, as on a real cluster."""
    account: dict[str, Any] = {}
    for doc in manifests():
        if doc["kind"] in RBAC_KINDS and server.get(doc["kind"], None, doc["metadata"]["name"]) is None:
            server.create(doc)
        if doc["kind"] == "ServiceAccount":
            account = doc["metadata"]
    return server.write_kubeconfig(
        path, token=server.service_account_token(account["namespace"], account["name"])
    )


def gpu_labels(sku: GpuSku) -> dict[str, str]:
    """The labels NVIDIA GPU feature discovery puts on a node of this instance type."""
    return {
        "nvidia.com/gpu.count": str(sku.gpu_count),
        # GPU feature discovery reports memory per GPU in MiB.
        "nvidia.com/gpu.memory": str(int(sku.gpu_memory_gb * 1024)),
        "nvidia.com/gpu.product": f"NVIDIA-{sku.gpu_model.replace(' ', '-')}-{sku.gpu_memory_gb:g}GB",
    }


class Controller:
    """The controller process; its output goes to `log` for failure messages. `env` is added to a
    clean environment (the test's own KAIRAY_* / AZURE_* are left out)."""

    def __init__(
        self, kubeconfig: Path, log: Path, *extra_args: str, env: Mapping[str, str] | None = None
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log = log
        self.extra_args = extra_args
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Controller:
        # The controller reads KAIRAY_* / AZURE_* from its environment: keep the test's out of it.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAIRAY_", "AZURE_", "KUBECONFIG"))}
        env.update(self.env)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "kairay.cli", "controller"),
                    *("--kubeconfig", str(self.kubeconfig)),
                    *("--runtime-image", RUNTIME_IMAGE),
                    *("--node-provisioner", "byo"),
                    *("--resync-seconds", str(RESYNC_SECONDS)),
                    *("--lease-seconds", str(LEASE_SECONDS)),
                    *self.extra_args,
                ],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last status write, like a node dying under the controller."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.terminate()
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Cluster:
    def __init__(self, server: FakeApiServer, api: client.ApiClient, kuberay: FakeKubeRay) -> None:
        self.server = server
        self.api = api
        self.kuberay = kuberay
        self.custom = client.CustomObjectsApi(api)
        self.controller: Controller | None = None
        self.liveness = ""

    # objects (Workspaces through the real client, the rest straight into the fake's store)

    def namespace(self, name: str) -> str:
        self.server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        return name

    def add(self, obj: dict[str, Any]) -> None:
        """A ConfigMap, Secret or other namespaced core object, as `kubectl apply` would create it."""
        self.server.create({"apiVersion": "v1", **obj})

    def gpu_node(self, name: str, labels: dict[str, str]) -> None:
        """A Ready A100 node with GPU feature discovery labels, as the byo provisioner reads them."""
        self.node(name, {**labels, **gpu_labels(get_sku(A100))})

    def node(
        self, name: str, labels: dict[str, str], *, ready: bool = True, taints: tuple[str, ...] = ()
    ) -> None:
        """A Node as kubelet registers it; `taints` as AKS writes them, `key=value:Effect`."""
        spec = []
        for taint in taints:
            key_value, _, effect = taint.rpartition(":")
            key, _, value = key_value.partition("=")
            spec.append({"key": key, "value": value, "effect": effect})
        self.server.create(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": labels},
                "spec": {"taints": spec} if spec else {},
            }
        )
        self.set_node_ready(name, ready)

    def set_node_ready(self, name: str, ready: bool = True) -> None:
        # The API server ignores `status` on create; kubelet reports it through the subresource.
        condition = {
            "type": "Ready",
            "status": "True" if ready else "False",
            "reason": "KubeletReady" if ready else "KubeletNotReady",
            "message": "kubelet is ready" if ready else "container runtime is starting",
        }
        self.server.patch("nodes", None, name, {"status": {"conditions": [condition]}}, subresource="status")

    def create_workspace(self, ws: dict[str, Any]) -> dict[str, Any]:
        namespace = ws["metadata"]["namespace"]
        created = self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, ws)
        return cast(dict[str, Any], created)

    def patch_workspace(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        patched = self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, patch, _content_type="application/merge-patch+json"
        )
        return cast(dict[str, Any], patched)

    def delete_workspace(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def workspace(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.server.get(PLURAL, namespace, name)

    def rayservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.server.get("rayservices", namespace, name)

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return [e for e in self.server.list("events", namespace) if e["involvedObject"]["name"] == name]

    def denied(self) -> list[str]:
        """Requests of a ServiceAccount (the controller's) that RBAC refused: each a rule the
        controller's ClusterRole lacks."""
        return [
            f"{r.verb} {r.resource} (group {r.group!r}) as {r.user}"
            for r in self.server.request_log
            if r.code == 403 and r.user.startswith("system:serviceaccount:")
        ]

    # expectations

    def expected_objects(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """What `render_objects` makes of the stored Workspace (what the controller must have applied)."""
        stored = self.workspace(namespace, name)
        assert stored is not None
        return render_objects(parse_workspace(stored), SETTINGS)

    def wait(self, what: str, predicate: Callable[[], Any], timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                log = self.controller.output()[-6000:] if self.controller else ""
                raise AssertionError(f"timed out waiting for {what}\n--- controller log ---\n{log}")
            time.sleep(0.05)

    def wait_status(
        self, namespace: str, name: str, predicate: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        def check() -> bool:
            obj = self.workspace(namespace, name)
            return obj is not None and predicate(obj)

        try:
            self.wait(what, check)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- Workspace ---\n{self.workspace(namespace, name)}") from None
        found = self.workspace(namespace, name)
        assert found is not None
        return found


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def condition_is(obj: dict[str, Any], kind: str, status: str, reason: str | None = None) -> bool:
    found = conditions(obj).get(kind)
    return found is not None and found["status"] == status and reason in (None, found["reason"])


def state(obj: dict[str, Any]) -> str | None:
    return (obj.get("status") or {}).get("state")


def is_ready(obj: dict[str, Any]) -> bool:
    """State Ready, with every condition written for the Workspace's current generation."""
    generation = obj["metadata"]["generation"]
    return state(obj) == "Ready" and all(
        c.get("observedGeneration") == generation for c in conditions(obj).values()
    )


def sized_workspace(
    namespace: str,
    instance_type: str,
    preset: str,
    *,
    runtime: str | None = None,
    preferred_nodes: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Inference Workspace `ws` whose labelSelector is `pool: <namespace>`."""
    resource: dict[str, Any] = {
        "instanceType": instance_type,
        "labelSelector": {"matchLabels": {"pool": namespace}},
    }
    if preferred_nodes:
        resource["preferredNodes"] = list(preferred_nodes)
    metadata: dict[str, Any] = {"name": "ws", "namespace": namespace}
    if runtime:
        metadata["annotations"] = {"kaito.sh/runtime": runtime}
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": metadata,
        "resource": resource,
        "inference": {"preset": {"name": preset}},
    }


def tuning_workspace(namespace: str, output: str) -> dict[str, Any]:
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": "tune", "namespace": namespace},
        "resource": {"instanceType": A100, "labelSelector": {"matchLabels": {"pool": namespace}}},
        "tuning": {
            "preset": {"name": "phi-3-mini-4k-instruct"},
            "method": "lora",
            "config": "training",
            "input": {"image": "registry.test/data/sql:1", "imagePullSecrets": ["pull-creds"]},
            "output": {"image": output, "imagePushSecret": "push-creds"},
        },
    }


def assert_rayservice_follows_plan(rayservice: dict[str, Any], plan: InferencePlan) -> None:
    """One Ray worker per planned node, each asking for the node's GPUs, and the engine split as planned."""
    (workers,) = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert workers["replicas"] == plan.nodes
    (container,) = workers["template"]["spec"]["containers"]
    gpus = str(plan.gpus_per_node)
    assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus
    assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
    (app,) = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]
    engine_args = app["args"]["engine_args"]
    planned = plan.engine_args()
    for key in ("tensor_parallel_size", "pipeline_parallel_size", "dtype", "max_model_len"):
        assert engine_args[key] == planned[key], key


_FILTER = re.compile(r'^(?P<path>[^\[]*)\[\?\(@\.(?P<key>\w+)=="(?P<value>[^"]*)"\)\](?P<rest>.*)$')


def printer_columns(obj: dict[str, Any]) -> dict[str, Any]:
    """What `kubectl get workspace` shows: each additionalPrinterColumn's JSONPath evaluated (the
    two forms the CRD uses: `.a.b` and `.a[?(@.k=="v")].b`)."""

    def walk(value: Any, path: str) -> Any:
        for part in filter(None, path.split(".")):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    (version,) = [v for v in load_crd()["spec"]["versions"] if v["name"] == VERSION]
    shown: dict[str, Any] = {}
    for column in version["additionalPrinterColumns"]:
        match = _FILTER.match(column["jsonPath"])
        if match is None:
            shown[column["name"]] = walk(obj, column["jsonPath"])
            continue
        items = walk(obj, match["path"]) or []
        hits = [walk(item, match["rest"]) for item in items if item.get(match["key"]) == match["value"]]
        shown[column["name"]] = hits[0] if hits else None
    return shown
