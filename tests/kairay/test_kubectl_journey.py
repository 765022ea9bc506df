"""A user's path through the real kubectl (the pinned binary of tests/harness/kubectl.py) against
the test cluster: the fake API server with kairay's CRD, fake KubeRay and the real controller.

Workspaces are applied verbatim from tests/kairay/workspaces/ (Kaito-style seeds in both API
versions), then seen with `get` (Kaito's columns), `describe` (the controller's events) and
`explain`, changed with `apply --server-side`, `patch` and `edit`, and deleted with what the
Workspace owns. Each test works in a namespace of its own on the one shared cluster.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.fake_apiserver import FakeApiServer
from harness.fake_kuberay import FakeKubeRay
from presets.skus import get_sku
from tests.controller.cluster import (
    Cluster,
    Controller,
    gpu_labels,
    install_crds,
    is_ready,
    service_account_kubeconfig,
)
from tests.harness.kubectl import PINNED_VERSION, Kubectl, client_version, kubectl_binary

REPO = Path(__file__).resolve().parents[2]
SEEDS = Path(__file__).parent / "workspaces"
FALCON = SEEDS / "falcon-7b-instruct-v1alpha1.yaml"
PHI3 = SEEDS / "phi-3-mini-v1beta1.yaml"
TUNING = SEEDS / "tuning-phi-3-v1alpha1.yaml"
INVALID = SEEDS / "invalid-count-and-access-mode.yaml"
KAITO_COLUMNS = ["NAME", "INSTANCE", "RESOURCEREADY", "INFERENCEREADY", "JOBSTARTED", "WORKSPACESUCCEEDED"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("kubectl-journey")
    with FakeApiServer() as server, server.api_client() as api:
        install_crds(server)
        with FakeKubeRay(api, job_run_seconds=0.3, watch_timeout_seconds=1) as kuberay:
            cluster = Cluster(server, api, kuberay)
            controller = cluster.controller = Controller(
                service_account_kubeconfig(server, root / "controller-kubeconfig"), root / "controller.log"
            ).start()
            try:
                yield cluster
            finally:
                code = controller.stop()
            assert code == 0, controller.output()[-4000:]
            assert cluster.denied() == []
            assert kuberay.errors == []


@pytest.fixture(scope="module")
def kubectl(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Kubectl:
    root = tmp_path_factory.mktemp("kubectl")
    return Kubectl(cluster.server.write_kubeconfig(root / "kubeconfig"), root / "cache")


def seed(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def nodes_for(cluster: Cluster, path: Path, namespace: str) -> None:
    """A Ready node of the seed's instance type carrying the seed's labelSelector labels."""
    resource = seed(path)["resource"]
    labels = dict(resource["labelSelector"]["matchLabels"])
    cluster.node(f"{namespace}-gpu-0", {**labels, **gpu_labels(get_sku(resource["instanceType"]))})


def contains(shown: Any, wanted: Any) -> bool:
    """Everything in `wanted` is in `shown` (which may hold more: defaults, server fields)."""
    if isinstance(wanted, dict):
        return isinstance(shown, dict) and all(
            k in shown and contains(shown[k], v) for k, v in wanted.items()
        )
    return bool(shown == wanted)


def table(output: str) -> list[dict[str, str]]:
    """`kubectl get` output as one {column: cell} per row, cut at the header's column starts (empty
    cells leave blanks, not a shorter row)."""
    header, *lines = output.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    return [
        {
            name: line[begin:end].strip()
            for name, begin, end in zip(names, starts, [*starts[1:], None], strict=True)
        }
        for line in lines
    ]


def test_the_pinned_kubectl_is_the_one_that_runs() -> None:
    assert client_version() == f"v{PINNED_VERSION}"
    assert kubectl_binary() != Path("/usr/bin/kubectl").resolve()


@pytest.mark.parametrize("path", [FALCON, PHI3, TUNING], ids=lambda p: p.stem)
def test_seeds_apply_verbatim_in_both_api_versions(cluster: Cluster, kubectl: Kubectl, path: Path) -> None:
    namespace = cluster.namespace(f"seed-{path.stem[:40]}")
    name = seed(path)["metadata"]["name"]
    assert kubectl("apply", "-n", namespace, "-f", str(path)).strip() == f"workspace.kaito.sh/{name} created"
    # Unchanged on a second apply, whichever version the file names (objects are stored as v1beta1),
    # and whatever the controller wrote meanwhile (finalizer, status).
    assert (
        kubectl("apply", "-n", namespace, "-f", str(path)).strip() == f"workspace.kaito.sh/{name} unchanged"
    )
    for version in ("v1alpha1", "v1beta1"):
        shown = yaml.safe_load(
            kubectl("get", f"workspaces.{version}.kaito.sh", name, "-n", namespace, "-o", "yaml")
        )
        assert shown["apiVersion"] == f"kaito.sh/{version}"
        assert contains(shown, {k: v for k, v in seed(path).items() if k not in ("apiVersion", "metadata")})
    kubectl("delete", "-n", namespace, "-f", str(path), "--wait=true", "--timeout=30s")


def test_v1alpha1_seed_goes_ready_and_get_shows_kaitos_columns(cluster: Cluster, kubectl: Kubectl) -> None:
    namespace = cluster.namespace("falcon")
    nodes_for(cluster, FALCON, namespace)
    kubectl("apply", "-n", namespace, "-f", str(FALCON))
    name = seed(FALCON)["metadata"]["name"]
    ready = cluster.wait_status(namespace, name, is_ready, "the v1alpha1 Workspace to be Ready")
    assert ready["status"]["state"] == "Ready"

    (cells,) = table(kubectl("get", "workspace", "-n", namespace))
    assert list(cells) == [*KAITO_COLUMNS, "STATE", "AGE"]
    assert cells["NAME"] == name and cells["INSTANCE"] == "Standard_NC12s_v3"
    assert (cells["RESOURCEREADY"], cells["INFERENCEREADY"], cells["WORKSPACESUCCEEDED"]) == ("True",) * 3
    assert cells["JOBSTARTED"] == ""  # an inference Workspace has no such condition
    assert cells["STATE"] == "Ready" and cells["AGE"][-1] in "smhd"

    described = kubectl("describe", "workspace", name, "-n", namespace)
    events = described.split("\nEvents:", 1)[1]
    assert "RayServiceCreated" in events and f"created RayService {name}" in events


def test_server_side_apply_and_edit_style_changes(cluster: Cluster, kubectl: Kubectl, tmp_path: Path) -> None:
    namespace = cluster.namespace("phi3")
    nodes_for(cluster, PHI3, namespace)
    name = seed(PHI3)["metadata"]["name"]
    applied = kubectl("apply", "--server-side", "-n", namespace, "-f", str(PHI3)).strip()
    assert applied == f"workspace.kaito.sh/{name} serverside-applied"
    cluster.wait_status(namespace, name, is_ready, "the server-side applied Workspace to be Ready")

    # `kubectl edit`, with an editor that changes the YAML it is handed, as a user would.
    editor = f"{shlex.quote(sys.executable)} -c {shlex.quote(_EDIT)}"
    edited = kubectl("edit", "workspace", name, "-n", namespace, env={"KUBE_EDITOR": editor})
    assert edited.strip() == f"workspace.kaito.sh/{name} edited"
    stored = cluster.workspace(namespace, name)
    assert stored is not None
    labels = stored["metadata"]["labels"]
    assert labels == {"team": "edited"}

    patched = kubectl("patch", "workspace", name, "-n", namespace, "--type", "merge", "-p", _ADAPTER_PATCH)
    assert patched.strip() == f"workspace.kaito.sh/{name} patched"
    # Custom resources take no strategic merge patch (kubectl's default type): kubectl says so.
    refused = kubectl.fails(
        "patch", "workspace", name, "-n", namespace, "-p", '{"metadata":{"labels":{"a":"b"}}}'
    )
    assert (
        "application/strategic-merge-patch+json is not supported by kaito.sh/v1beta1, Kind=Workspace"
        in refused
    )
    cluster.wait_status(
        namespace,
        name,
        lambda ws: is_ready(ws) and ws["metadata"]["generation"] == 2,
        "the patched Workspace to be Ready again",
    )
    # Re-applying the file, after the patch, through the other API version, conflicts with nothing.
    v1alpha1 = tmp_path / "phi-3-v1alpha1.yaml"
    v1alpha1.write_text(PHI3.read_text().replace("kaito.sh/v1beta1", "kaito.sh/v1alpha1"))
    assert "serverside-applied" in kubectl("apply", "--server-side", "-n", namespace, "-f", str(v1alpha1))


def test_explain_workspace_inference(kubectl: Kubectl) -> None:
    explained = kubectl("explain", "workspace.inference")
    assert "KIND:       Workspace" in explained and "FIELD: inference <Object>" in explained
    for field in ("adapters", "preset", "config"):
        assert f"\n  {field}\t<" in explained, field


def test_invalid_workspace_is_refused_with_the_fields(cluster: Cluster, kubectl: Kubectl) -> None:
    namespace = cluster.namespace("invalid")
    refused = kubectl.fails("apply", "-n", namespace, "-f", str(INVALID))
    assert 'The Workspace "workspace-invalid" is invalid' in refused
    assert "resource.count: Invalid value: 0: should be greater than or equal to 1" in refused
    assert 'inference.preset.accessMode: Unsupported value: "secret"' in refused
    assert cluster.workspace(namespace, "workspace-invalid") is None


def test_unknown_fields_warn_or_are_refused(cluster: Cluster, kubectl: Kubectl, tmp_path: Path) -> None:
    namespace = cluster.namespace("unknown")
    typo = tmp_path / "typo.yaml"
    typo.write_text(PHI3.read_text().replace("  preset:", "  presets: {}\n  preset:"))
    # kubectl validates strictly by default, on the server (fieldValidation=Strict).
    refused = kubectl.fails("apply", "-n", namespace, "-f", str(typo))
    assert 'strict decoding error: unknown field "inference.presets"' in refused
    done = kubectl.run("apply", "--validate=warn", "-n", namespace, "-f", str(typo))
    assert done.returncode == 0 and 'Warning: unknown field "inference.presets"' in done.stderr
    stored = cluster.workspace(namespace, "workspace-phi-3-mini")
    assert stored is not None and "presets" not in stored["inference"]


def test_delete_cascades_to_the_rayservice_and_service(cluster: Cluster, kubectl: Kubectl) -> None:
    namespace = cluster.namespace("delete")
    nodes_for(cluster, FALCON, namespace)
    kubectl("apply", "-n", namespace, "-f", str(FALCON))
    name = seed(FALCON)["metadata"]["name"]
    cluster.wait_status(namespace, name, is_ready, "the Workspace to be Ready")
    assert cluster.rayservice(namespace, name) is not None
    assert cluster.server.get("services", namespace, name) is not None

    deleted = kubectl("delete", "workspace", name, "-n", namespace, "--timeout=30s")
    assert deleted.strip() == f'workspace.kaito.sh "{name}" deleted from {namespace} namespace'
    cluster.wait(
        "the RayService and Service to be gone",
        lambda: (
            cluster.rayservice(namespace, name) is None
            and cluster.server.get("services", namespace, name) is None
        ),
    )
    assert "No resources found" in kubectl.run("get", "workspace,rayservice", "-n", namespace).stderr


def test_kairay_manifests_apply_with_kubectl(tmp_path: Path) -> None:
    """The whole install manifest on an empty cluster, then again (nothing to change)."""
    manifests = subprocess.run(
        [sys.executable, "-m", "kairay.cli", "manifests"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    with FakeApiServer() as server:
        kubectl = Kubectl(server.write_kubeconfig(tmp_path / "kubeconfig"), tmp_path / "cache")
        kinds = [d["kind"] for d in yaml.safe_load_all(manifests) if d]
        created = kubectl("apply", "-f", "-", stdin=manifests).splitlines()
        assert len(created) == len(kinds) and all(line.endswith(" created") for line in created)
        again = kubectl("apply", "-f", "-", stdin=manifests).splitlines()
        assert len(again) == len(kinds) and all(line.endswith(" unchanged") for line in again), again
        for doc in yaml.safe_load_all(manifests):
            meta = doc["metadata"]
            where = ["-n", meta["namespace"]] if "namespace" in meta else []
            group = doc["apiVersion"].rpartition("/")[0]
            kubectl("get", f"{doc['kind'].lower()}.{group}".rstrip("."), meta["name"], *where)
        assert {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"} <= set(
            kinds
        )


# Adds a label to the YAML kubectl edit hands the editor (the file's path is the last argument).
_EDIT = """
import sys, yaml
path = sys.argv[-1]
lines = [line for line in open(path) if not line.startswith("#")]
doc = yaml.safe_load("".join(lines))
doc["metadata"]["labels"] = {"team": "edited"}
open(path, "w").write(yaml.safe_dump(doc))
"""
_ADAPTER_PATCH = json.dumps(
    {
        "inference": {
            "adapters": [
                {"source": {"name": "sql", "image": "registry.test/adapters/sql:1"}, "strength": "0.5"}
            ]
        }
    }
)
