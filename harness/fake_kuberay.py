"""A fake KubeRay operator for tests: it reacts to RayService and RayJob objects in a (fake) API server the
way KubeRay v1 does, through the real `kubernetes` client.

- RayService: creates a RayCluster `<name>-xxxxx` owned by it, reports it as pending and initializing, then
  (after `cluster_start_seconds` + `deploy_seconds`) makes it active: applications RUNNING, `Ready` True,
  Services `<name>-head-svc` (6379, 8265, 10001, 8000) and `<name>-serve-svc` (8000) owned by the
  RayService. A `serveConfigV2` change is deployed in place (applications DEPLOYING -> RUNNING, same
  `activeServiceStatus.rayClusterName`); a `rayClusterConfig` change (hashed like KubeRay: replicas and
  tolerations do not count) prepares a new cluster and switches to it once it serves (zero downtime).
  `fail_rayservice` makes the applications DEPLOY_FAILED / UNHEALTHY until the spec changes. As on a real
  cluster, Ray decides first (`ray_checks`): a `serveConfigV2` that Ray Serve's schema refuses deploys
  nothing (and is a violation); an application whose `import_path` does not resolve or whose `args` its
  builder refuses is DEPLOY_FAILED with Serve's message, and a new cluster is not switched to.
- RayJob: Initializing (cluster) -> Running (jobStatus RUNNING) -> the outcome chosen per job with
  `set_job_outcome` (default SUCCEEDED/Complete; FAILED/Failed with reason AppFailed), honouring
  activeDeadlineSeconds and deleting the cluster ttlSecondsAfterFinished after the end when
  shutdownAfterJobFinishes is set. An entrypoint `python -m X` whose module X cannot be found fails the
  job (AppFailed, with the driver's "No module named X"), whatever outcome was chosen.

Every RayService/RayJob version it sees, and every object it writes, is validated against the schema
facts of KubeRay's released CRDs (`kuberay_schema.json`, made by `scripts/kuberay_schema.py`; the release
is named at its top) and the operator's own checks; problems are collected in `violations` (tests assert
it stays empty). Unexpected
errors in its threads are collected in `errors`.

One module: it mirrors one operator's reconcile of RayService and RayJob, which share the Ray
cluster and Serve status logic.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import heapq
import json
import random
import string
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from harness.ray_checks import app_build_error, entrypoint_error, serve_config_errors
from kairay.api.crds.schema import validate_object

GROUP = "ray.io"
VERSION = "v1"
SCHEMA_PATH = Path(__file__).with_name("kuberay_schema.json")

HEAD_SERVICE_PORTS = (("gcs-server", 6379), ("dashboard", 8265), ("client", 10001), ("serve", 8000))
SERVE_PORT = 8000

AppFailure = Literal["DEPLOY_FAILED", "UNHEALTHY"]
JobOutcome = Literal["SUCCEEDED", "FAILED", "STOPPED", "RUNNING"]

_Key = tuple[str, str, str]  # (plural, namespace, name)


# --- CRDs -----------------------------------------------------------------------------------------------


def kuberay_crds(*, released_schemas: bool = False) -> list[dict[str, Any]]:
    """The ray.io/v1 CRDs (RayService, RayJob, RayCluster): namespaced, with the status subresource.

    By default their schema keeps every field, so that a typo reaches the fake operator and is reported
    as a violation instead of being pruned silently (the released CRDs' schemas are checked by
    `schema_errors`). `released_schemas=True` installs the released schemas instead: the API server
    then refuses, prunes and defaults like a cluster with KubeRay installed."""
    kinds = (("RayService", "rayservices"), ("RayJob", "rayjobs"), ("RayCluster", "rayclusters"))
    if released_schemas:
        return [cast(dict[str, Any], validation_crd(kind)) for kind, _ in kinds]
    return [_crd(kind, plural) for kind, plural in kinds]


def _crd(kind: str, plural: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
            ],
        },
    }


def install_crds(
    api_client: client.ApiClient, timeout: float = 10.0, *, released_schemas: bool = False
) -> None:
    """Register the KubeRay CRDs (409 = already there) and wait until their endpoints answer."""
    api = client.CustomObjectsApi(api_client)
    for crd in kuberay_crds(released_schemas=released_schemas):
        try:
            api.create_cluster_custom_object("apiextensions.k8s.io", "v1", "customresourcedefinitions", crd)
        except ApiException as error:
            if error.status != 409:
                raise
    deadline = time.monotonic() + timeout
    for plural in ("rayservices", "rayjobs", "rayclusters"):
        while True:
            try:
                api.list_cluster_custom_object(GROUP, VERSION, plural)
                break
            except ApiException as error:
                if error.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


# --- schema ---------------------------------------------------------------------------------------------


@functools.cache
def load_schema() -> dict[str, Any]:
    """The schema facts of KubeRay's released CRDs (see `scripts/kuberay_schema.py`)."""
    return cast(dict[str, Any], json.loads(SCHEMA_PATH.read_text()))


def validation_crd(kind: str) -> dict[str, Any] | None:
    """The released CRD of `kind` as far as validation goes: its ray.io/v1 schema, without the prose."""
    return copy.deepcopy(_released_crd(kind))


@functools.cache
def _released_crd(kind: str) -> dict[str, Any] | None:
    schema = load_schema()["schemas"].get(kind)
    if schema is None:
        return None
    crd = _crd(kind, f"{kind.lower()}s")
    crd["spec"]["versions"][0]["schema"] = {"openAPIV3Schema": schema}
    return crd


def schema_errors(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Problems of one RayService/RayJob/RayCluster (created, or updated from `old`), as `path: message`
    strings: what the released CRD refuses (structure, types, enums, required fields, CEL rules), plus
    fields it does not declare (a real server prunes them silently; here a typo fails the test), plus
    what KubeRay's operator refuses before it acts (`operator_errors`)."""
    crd = _released_crd(str(obj.get("kind")))
    if crd is None:
        return [f"kind: not a KubeRay kind: {obj.get('kind')!r}"]
    problems = [f"{error.field or '<root>'}: {error.reason}" for error in validate_object(crd, obj, old)]
    return sorted(problems + operator_errors(obj), key=lambda problem: problem.partition(": ")[0])


# What KubeRay v1.7's operator refuses although its CRDs let it in (ray-operator/controllers/ray/utils/
# validation.go, apis/ray/v1/*_types.go), and what the Pods it would make could not be (core validation).
_MAX_NAME = {"RayCluster": 53, "RayService": 47, "RayJob": 47}  # utils/constant.go Max*NameLength
_UPGRADE_TYPES = ("NewClusterWithIncrementalUpgrade", "NewCluster", "None")
_SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
_JOB_FAILED_REASONS = (
    "SubmissionFailed",
    "DeadlineExceeded",
    "PreRunningDeadlineExceeded",
    "AppFailed",
    "JobDeploymentStatusTransitionGracePeriodExceeded",
    "JobStatusCheckTimeoutExceeded",
    "ValidationFailed",
)
_TOLERATION_OPERATORS = ("Exists", "Equal")


def operator_errors(obj: dict[str, Any]) -> list[str]:
    """The KubeRay operator's own checks of an object (it marks such objects failed instead of acting)."""
    kind = str(obj.get("kind"))
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    problems: list[str] = []
    name = str((obj.get("metadata") or {}).get("name", ""))
    if len(name) > _MAX_NAME.get(kind, 253):
        problems.append(f"metadata.name: {kind} name should be no more than {_MAX_NAME[kind]} characters")
    cluster: Any = spec if kind == "RayCluster" else None
    if kind == "RayService":
        cluster = spec.get("rayClusterConfig")
        upgrade = (spec.get("upgradeStrategy") or {}).get("type")
        if upgrade is not None and upgrade not in _UPGRADE_TYPES:
            problems.append(f"spec.upgradeStrategy.type: {upgrade!r} is not one of {_UPGRADE_TYPES}")
    elif kind == "RayJob":
        cluster = spec.get("rayClusterSpec")
        mode = spec.get("submissionMode")
        if mode is not None and mode not in _SUBMISSION_MODES:
            problems.append(f"spec.submissionMode: {mode!r} is not one of {_SUBMISSION_MODES}")
        if spec.get("ttlSecondsAfterFinished", 0) < 0:
            problems.append("spec.ttlSecondsAfterFinished: must be a non-negative integer")
        for deadline in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
            if deadline in spec and spec[deadline] <= 0:
                problems.append(f"spec.{deadline}: must be a positive integer")
        if cluster is None and not spec.get("clusterSelector"):
            problems.append("spec: one of RayClusterSpec or ClusterSelector must be set")
        reason = (obj.get("status") or {}).get("reason")
        if reason and reason not in _JOB_FAILED_REASONS:
            problems.append(f"status.reason: KubeRay sets no reason {reason!r}")
    if isinstance(cluster, dict):
        problems += _cluster_errors(cluster)
    return problems


def _cluster_errors(cluster: dict[str, Any]) -> list[str]:
    groups = [("headGroupSpec", cluster.get("headGroupSpec") or {})]
    groups += [(f"workerGroupSpecs[{i}]", g) for i, g in enumerate(cluster.get("workerGroupSpecs") or [])]
    problems: list[str] = []
    for path, group in groups:
        for bound in ("minReplicas", "maxReplicas"):
            if group.get(bound, 0) < 0:
                problems.append(f"{path}.{bound}: worker group has negative {bound}")
        for key in group.get("rayStartParams") or {}:
            # KubeRay writes `--{key}`: a key with dashes becomes `----num-cpus` and `ray start` fails.
            if key.startswith("-"):
                problems.append(f"{path}.rayStartParams[{key}]: keys are option names without dashes")
        pod = (group.get("template") or {}).get("spec") or {}
        for i, toleration in enumerate(pod.get("tolerations") or []):
            operator = toleration.get("operator", "Equal")
            if operator not in _TOLERATION_OPERATORS:
                problems.append(
                    f"{path}.template.spec.tolerations[{i}].operator: Unsupported value: {operator!r}"
                )
    return problems


class _SchemaChecker:
    """`schema_errors`, cheaper for the many versions of one object: each content is checked once (the
    resourceVersion aside: the server sets it)."""

    _MAX_MEMO = 10_000

    def __init__(self) -> None:
        self._memo: dict[str, list[str]] = {}

    def errors(self, obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
        """`old`: the version before, for the CEL transition rules (`oldSelf`)."""
        key = json.dumps([_unversioned(obj), old and _unversioned(old)], sort_keys=True, default=repr)
        found = self._memo.get(key)
        if found is None:
            found = schema_errors(obj, old)
            if len(self._memo) >= self._MAX_MEMO:
                self._memo.clear()
            self._memo[key] = found
        return list(found)


def _unversioned(obj: dict[str, Any]) -> dict[str, Any]:
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return obj
    return {**obj, "metadata": {k: v for k, v in metadata.items() if k != "resourceVersion"}}


@dataclass(frozen=True)
class Violation:
    kind: str
    namespace: str
    name: str
    resource_version: str
    problem: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}@{self.resource_version}: {self.problem}"


# --- internal state -------------------------------------------------------------------------------------


@dataclass
class _Cluster:
    name: str
    hash: str
    ready_at: float


@dataclass
class _ServiceState:
    uid: str
    serve_config: str
    deployed_at: float  # when the applications of `serve_config` run on the target cluster
    active: _Cluster | None = None
    pending: _Cluster | None = None
    clusters_created: list[str] = field(default_factory=list)


@dataclass
class _Failure:
    status: AppFailure
    message: str
    generation: int | None = None  # bound on first use: the failure lasts until the spec changes


@dataclass
class _JobState:
    uid: str
    job_id: str
    cluster_name: str
    started_at: float
    running_at: float
    cluster_deleted: bool = False


@dataclass
class _Outcome:
    outcome: JobOutcome
    message: str


class _Queue:
    """Keys due at a time; a key is queued once, at its earliest due time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[_Key, float] = {}
        self._heap: list[tuple[float, _Key]] = []
        self.closed = False

    def add(self, key: _Key, at: float = 0.0) -> None:
        with self._cond:
            current = self._due.get(key)
            if current is not None and current <= at:
                return
            self._due[key] = at
            heapq.heappush(self._heap, (at, key))
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def get(self) -> _Key | None:
        with self._cond:
            while not self.closed:
                while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
                    heapq.heappop(self._heap)  # superseded by an earlier entry for the same key
                if self._heap:
                    at, key = self._heap[0]
                    wait = at - time.time()
                    if wait <= 0:
                        heapq.heappop(self._heap)
                        del self._due[key]
                        return key
                    self._cond.wait(min(wait, 0.5))
                else:
                    self._cond.wait(0.5)
            return None


# --- the operator ---------------------------------------------------------------------------------------


class FakeKubeRay:
    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        cluster_start_seconds: float = 0.2,
        deploy_seconds: float = 0.2,
        job_run_seconds: float = 0.2,
        watch_timeout_seconds: int = 5,
        seed: int | None = None,
    ) -> None:
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self.cluster_start_seconds = cluster_start_seconds
        self.deploy_seconds = deploy_seconds
        self.job_run_seconds = job_run_seconds
        self._watch_timeout = watch_timeout_seconds
        self._random = random.Random(seed)
        self._schema = _SchemaChecker()
        self._lock = threading.RLock()
        self._queue = _Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watches: list[watch.Watch] = []
        self._services: dict[tuple[str, str], _ServiceState] = {}
        self._jobs: dict[tuple[str, str], _JobState] = {}
        self._failures: dict[tuple[str | None, str], _Failure] = {}
        self._outcomes: dict[tuple[str | None, str], _Outcome] = {}
        self._seen_versions: set[tuple[str, str, str, str]] = set()
        # The last version checked of each object, for the CEL transition rules of the next one.
        self._last_seen: dict[tuple[str, str, str], dict[str, Any]] = {}
        # What the watches last saw of each object that KubeRay reacts to (see `_observe`).
        self._observed: dict[_Key, str] = {}
        self.violations: list[Violation] = []
        self.errors: list[str] = []

    # lifecycle

    def start(self) -> FakeKubeRay:
        workers: list[tuple[str, Callable[[], None]]] = [
            ("fake-kuberay-worker", self._work),
            ("fake-kuberay-watch-rayservices", lambda: self._watch("rayservices")),
            ("fake-kuberay-watch-rayjobs", lambda: self._watch("rayjobs")),
        ]
        for name, target in workers:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._queue.close()
        with self._lock:
            for active_watch in self._watches:
                active_watch.stop()
        for thread in self._threads:
            thread.join(timeout=self._watch_timeout + 2)
        self._threads.clear()

    def __enter__(self) -> FakeKubeRay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # test controls

    def fail_rayservice(
        self,
        name: str,
        status: AppFailure = "DEPLOY_FAILED",
        message: str = "Deploying application failed",
        *,
        namespace: str | None = None,
    ) -> None:
        """Make every application of the RayService (on the cluster being deployed to) report `status` with
        `message`, from now (or from its creation) until its spec changes. `namespace=None` matches any."""
        if status not in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise ValueError(f"status must be DEPLOY_FAILED or UNHEALTHY, got {status!r}")
        with self._lock:
            self._failures[(namespace, name)] = _Failure(status, message)
        self._poke("rayservices", namespace, name)

    def set_job_outcome(
        self, name: str, outcome: JobOutcome, message: str = "", *, namespace: str | None = None
    ) -> None:
        """How the Ray job of RayJob `name` ends once it has run `job_run_seconds` (default SUCCEEDED).
        "RUNNING" holds it running until another outcome is set. Call before the job would end."""
        if outcome not in ("SUCCEEDED", "FAILED", "STOPPED", "RUNNING"):
            raise ValueError(f"unknown outcome {outcome!r}")
        with self._lock:
            self._outcomes[(namespace, name)] = _Outcome(outcome, message)
        self._poke("rayjobs", namespace, name)

    def clusters_created(self, name: str, namespace: str) -> list[str]:
        """Names of the RayClusters made for a RayService so far, oldest first."""
        with self._lock:
            state = self._services.get((namespace, name))
            return list(state.clusters_created) if state else []

    # threads

    def _watch(self, plural: str) -> None:
        # Like an informer: list, then watch from the list's resourceVersion and resume each timed-out
        # watch where it stopped; list again only after 410 Gone or an error.
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    listing = cast(
                        dict[str, Any], self._custom.list_cluster_custom_object(GROUP, VERSION, plural)
                    )
                    self._on_listing(plural, listing.get("items") or [])
                    resource_version = (listing.get("metadata") or {}).get("resourceVersion")
                stream = watch.Watch()
                with self._lock:
                    self._watches.append(stream)
                try:
                    for event in stream.stream(
                        self._custom.list_cluster_custom_object,
                        GROUP,
                        VERSION,
                        plural,
                        resource_version=resource_version,
                        timeout_seconds=self._watch_timeout,
                        deserialize=False,
                    ):
                        resource_version = self._on_event(plural, event) or resource_version
                        if self._stop.is_set():
                            break
                finally:
                    with self._lock:
                        self._watches.remove(stream)
            except ApiException as error:
                resource_version = None
                if error.status != 410 and not self._stop.is_set():
                    self._record_error(f"watch {plural}", error)
                self._stop.wait(0.2)
            except Exception as error:  # connection drops while the server stops, bugs: keep watching
                resource_version = None
                if not self._stop.is_set():
                    self._record_error(f"watch {plural}", error)
                self._stop.wait(0.2)

    def _on_listing(self, plural: str, items: list[dict[str, Any]]) -> None:
        listed = set()
        for item in items:
            listed.add((item["metadata"]["namespace"], item["metadata"]["name"]))
            self._observe(plural, item)
        with self._lock:
            vanished = [key for key in self._observed if key[0] == plural and key[1:] not in listed]
        for key in vanished:  # deleted while no watch ran: the reconcile finds them gone
            self._queue.add(key)

    def _on_event(self, plural: str, event: dict[str, Any]) -> str | None:
        """Handle one watch event; its resourceVersion."""
        obj = event.get("object") or {}
        metadata = obj.get("metadata") or {}
        if event.get("type") in ("ADDED", "MODIFIED", "DELETED") and "name" in metadata:
            if event["type"] == "DELETED":
                key = (metadata.get("namespace", ""), metadata["name"])
                with self._lock:
                    self._observed.pop((plural, *key), None)
                    if plural == "rayservices":
                        self._services.pop(key, None)
                    else:
                        self._jobs.pop(key, None)
            else:
                self._observe(plural, obj)
        version = metadata.get("resourceVersion")
        return str(version) if version else None

    def _observe(self, plural: str, obj: dict[str, Any]) -> None:
        """Queue the object if what KubeRay's controllers react to changed: like their predicates
        (generation, labels, annotations), a status write alone does not trigger a reconcile."""
        metadata = obj["metadata"]
        key: _Key = (plural, metadata.get("namespace", ""), metadata["name"])
        seen = json.dumps(
            [
                metadata.get(field)
                for field in ("uid", "generation", "labels", "annotations", "deletionTimestamp")
            ],
            sort_keys=True,
        )
        with self._lock:
            if self._observed.get(key) == seen:
                return
            self._observed[key] = seen
        self._queue.add(key)

    def _work(self) -> None:
        while True:
            key = self._queue.get()
            if key is None:
                return
            plural, namespace, name = key
            try:
                with self._lock:
                    if plural == "rayservices":
                        self._reconcile_service(namespace, name)
                    else:
                        self._reconcile_job(namespace, name)
            except ApiException as error:
                if error.status == 409:  # a concurrent write: retry on fresh state
                    self._queue.add(key, time.time() + 0.05)
                elif not self._stop.is_set():
                    self._record_error(f"reconcile {plural} {namespace}/{name}", error)
                    self._queue.add(key, time.time() + 0.5)
            except Exception as error:
                if not self._stop.is_set():
                    self._record_error(f"reconcile {plural} {namespace}/{name}", error)
                    self._queue.add(key, time.time() + 0.5)

    def _record_error(self, where: str, error: BaseException) -> None:
        with self._lock:
            self.errors.append(f"{where}: {error!r}\n{''.join(traceback.format_exception(error))}")

    def _poke(self, plural: str, namespace: str | None, name: str) -> None:
        with self._lock:
            known = self._services if plural == "rayservices" else self._jobs
            for ns, known_name in list(known):
                if known_name == name and namespace in (None, ns):
                    self._queue.add((plural, ns, name))

    # RayService

    def _reconcile_service(self, namespace: str, name: str) -> None:
        obj = self._get("rayservices", namespace, name)
        if obj is None:
            self._services.pop((namespace, name), None)
            return
        self._check(obj)
        metadata, spec = obj["metadata"], obj.get("spec") or {}
        if metadata.get("deletionTimestamp"):
            return
        now = time.time()
        generation = int(metadata.get("generation") or 1)
        serve_config = str(spec.get("serveConfigV2") or "")
        cluster_config = spec.get("rayClusterConfig") or {}
        wanted_hash = _cluster_hash(cluster_config)
        state = self._services.get((namespace, name))
        if state is None or state.uid != metadata.get("uid"):
            state = _ServiceState(uid=str(metadata.get("uid")), serve_config=serve_config, deployed_at=0.0)
            state.pending = self._new_cluster(obj, "RayService", cluster_config, wanted_hash, state, now)
            state.deployed_at = state.pending.ready_at + self.deploy_seconds
            self._services[(namespace, name)] = state
        else:
            target = state.pending or state.active
            assert target is not None
            upgrades = ((spec.get("upgradeStrategy") or {}).get("type") or "NewCluster") != "None"
            if wanted_hash != target.hash and (upgrades or state.active is None):
                if state.pending is not None:
                    self._delete_cluster(namespace, state.pending.name)
                state.pending = self._new_cluster(obj, "RayService", cluster_config, wanted_hash, state, now)
                state.serve_config = serve_config
                state.deployed_at = state.pending.ready_at + self.deploy_seconds
            elif serve_config != state.serve_config:
                state.serve_config = serve_config
                state.deployed_at = max(now, target.ready_at) + self.deploy_seconds

        failure = self._failure_for(namespace, name, generation)
        # KubeRay switches to a cluster once all its applications run (Serve builds them first).
        serve = _serve_applications(state.serve_config)
        builds = not serve.refused and not serve.broken
        if state.pending is not None and now >= state.deployed_at and failure is None and builds:
            previous, state.active, state.pending = state.active, state.pending, None
            if previous is not None:
                self._delete_cluster(namespace, previous.name)
        if state.active is not None:
            self._ensure_services(obj, state.active.name)

        status = self._service_status(obj, state, failure, now)
        self._write_status("rayservices", obj, status)
        upcoming = [
            t for t in (state.deployed_at, state.pending.ready_at if state.pending else 0.0) if t > now
        ]
        if upcoming:
            self._queue.add(("rayservices", namespace, name), min(upcoming))

    def _failure_for(self, namespace: str, name: str, generation: int) -> _Failure | None:
        for key in ((namespace, name), (None, name)):
            failure = self._failures.get(key)
            if failure is None:
                continue
            if failure.generation is None:
                failure.generation = generation
            if failure.generation == generation:
                return failure
            del self._failures[key]  # the spec changed since: the new config deploys normally
        return None

    def _service_status(
        self, obj: dict[str, Any], state: _ServiceState, failure: _Failure | None, now: float
    ) -> dict[str, Any]:
        serve = _serve_applications(state.serve_config)
        for problem in serve.refused:
            self._violation(obj, f"spec.serveConfigV2: Ray Serve refuses it: {problem}")
        apps = serve.apps
        deployed = now >= state.deployed_at

        def applications(current: bool) -> dict[str, Any]:
            # `current`: the cluster runs (or is being given) the latest serve config.
            if failure is not None and current:
                return _app_statuses(apps, failure.status, failure.message)
            if current and not deployed:
                return _app_statuses(apps, "DEPLOYING", "")
            return _app_statuses(apps, "RUNNING", "", serve.broken if current else None)

        status: dict[str, Any] = {}
        if state.active is not None:
            active: dict[str, Any] = {"rayClusterName": state.active.name}
            if apps:
                active["applicationStatuses"] = applications(state.pending is None)
            status["activeServiceStatus"] = active
        if state.pending is not None:
            pending: dict[str, Any] = {"rayClusterName": state.pending.name}
            if apps and now >= state.pending.ready_at:
                pending["applicationStatuses"] = applications(True)
            status["pendingServiceStatus"] = pending

        previous = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}
        generation = int(obj["metadata"].get("generation") or 1)
        if state.active is not None:
            ready = _condition(
                previous,
                "Ready",
                "True",
                "NonZeroServeEndpoints",
                "Number of serve endpoints is greater than 0",
                generation,
            )
        else:
            ready = _condition(
                previous, "Ready", "False", "Initializing", "RayService is initializing", generation
            )
        if state.active is not None and state.pending is not None:
            upgrade = _condition(
                previous,
                "UpgradeInProgress",
                "True",
                "BothActivePendingClustersExist",
                "Both active and pending Ray clusters exist",
                generation,
            )
        elif state.active is not None:
            upgrade = _condition(
                previous,
                "UpgradeInProgress",
                "False",
                "NoPendingCluster",
                "Active Ray cluster exists and no pending Ray cluster",
                generation,
            )
        else:
            upgrade = _condition(
                previous,
                "UpgradeInProgress",
                "False",
                "Initializing",
                "RayService is initializing",
                generation,
            )
        status["conditions"] = [ready, upgrade]
        if state.active is not None:
            status["serviceStatus"] = "Running"
            status["numServeEndpoints"] = 1 + _worker_pods(obj["spec"].get("rayClusterConfig") or {})
        status["observedGeneration"] = generation
        return status

    def _ensure_services(self, owner: dict[str, Any], cluster_name: str) -> None:
        name, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
        specs = {
            f"{name}-head-svc": (HEAD_SERVICE_PORTS, {"ray.io/node-type": "head"}),
            f"{name}-serve-svc": ((("serve", SERVE_PORT),), {"ray.io/serve": "true"}),
        }
        for service_name, (ports, selector_extra) in specs.items():
            selector = {"ray.io/cluster": cluster_name, **selector_extra}
            try:
                existing = self._core.read_namespaced_service(service_name, namespace)
            except ApiException as error:
                if error.status != 404:
                    raise
                existing = None
            if existing is None:
                body = {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {
                        "name": service_name,
                        "namespace": namespace,
                        "labels": {
                            "ray.io/originated-from-cr-name": name,
                            "ray.io/originated-from-crd": "RayService",
                        },
                        "ownerReferences": [_owner_reference(owner)],
                    },
                    "spec": {
                        "type": "ClusterIP",
                        "selector": selector,
                        "ports": [
                            {"name": port_name, "port": port, "targetPort": port, "protocol": "TCP"}
                            for port_name, port in ports
                        ],
                    },
                }
                self._core.create_namespaced_service(
                    namespace, cast(client.V1Service, client.V1Service.from_dict(body))
                )
                if self._owner_gone(owner):
                    self._core.delete_namespaced_service(service_name, namespace)
            elif existing.spec is None or (existing.spec.selector or {}) != selector:
                # KubeRay moves the services to the new cluster when an upgrade switches over.
                self._core.patch_namespaced_service(service_name, namespace, {"spec": {"selector": selector}})

    # RayJob

    def _reconcile_job(self, namespace: str, name: str) -> None:
        obj = self._get("rayjobs", namespace, name)
        if obj is None:
            self._jobs.pop((namespace, name), None)
            return
        self._check(obj)
        metadata, spec = obj["metadata"], obj.get("spec") or {}
        if metadata.get("deletionTimestamp"):
            return
        now = time.time()
        status = copy.deepcopy(obj.get("status") or {})
        state = self._jobs.get((namespace, name))
        if state is None or state.uid != metadata.get("uid"):
            if status.get("jobDeploymentStatus"):
                return  # a job this operator did not start (e.g. from before a restart): leave it
            state = self._start_job(obj, now)
            self._jobs[(namespace, name)] = state
            status = {
                "jobDeploymentStatus": "Initializing",
                "jobId": state.job_id,
                "rayClusterName": state.cluster_name,
                "dashboardURL": f"{state.cluster_name}-head-svc.{namespace}.svc.cluster.local:8265",
                "startTime": _timestamp(now),
                "observedGeneration": int(metadata.get("generation") or 1),
            }

        wake: list[float] = []
        deployment = status.get("jobDeploymentStatus")
        deadline = spec.get("activeDeadlineSeconds")
        if deployment in ("Initializing", "Running"):
            if deadline and now >= state.started_at + deadline:
                status.update(
                    jobDeploymentStatus="Failed",
                    reason="DeadlineExceeded",
                    message=f"The RayJob has passed the activeDeadlineSeconds ({deadline} s).",
                    endTime=_timestamp(now),
                    failed=int(status.get("failed") or 0) + 1,
                )
            elif deadline:
                wake.append(state.started_at + deadline)
        deployment = status.get("jobDeploymentStatus")
        if deployment == "Initializing":
            if now >= state.running_at:
                status.update(
                    jobDeploymentStatus="Running",
                    jobStatus="RUNNING",
                    rayJobInfo={"startTime": _timestamp(now)},
                )
            else:
                wake.append(state.running_at)
        if status.get("jobDeploymentStatus") == "Running":
            outcome = self._outcome_for(namespace, name, str(spec.get("entrypoint") or ""))
            ends_at = state.running_at + self.job_run_seconds
            if outcome.outcome != "RUNNING" and now >= ends_at:
                status.update(_job_end(outcome, now, status))
            elif outcome.outcome != "RUNNING":
                wake.append(ends_at)
        finished = status.get("jobDeploymentStatus") in ("Complete", "Failed")
        if finished and spec.get("shutdownAfterJobFinishes") and not state.cluster_deleted:
            end = _parse_timestamp(status.get("endTime")) or now
            delete_at = end + int(spec.get("ttlSecondsAfterFinished") or 0)
            if now >= delete_at:
                self._delete_cluster(namespace, state.cluster_name)
                state.cluster_deleted = True
            else:
                wake.append(delete_at)
        self._write_status("rayjobs", obj, status)
        if wake:
            self._queue.add(("rayjobs", namespace, name), min(wake))

    def _start_job(self, obj: dict[str, Any], now: float) -> _JobState:
        spec = obj.get("spec") or {}
        name = obj["metadata"]["name"]
        if spec.get("rayClusterSpec"):
            cluster = self._new_cluster(obj, "RayJob", spec["rayClusterSpec"], "", None, now)
            cluster_name = cluster.name
        else:
            cluster_name = (spec.get("clusterSelector") or {}).get("ray.io/cluster", "")
        return _JobState(
            uid=str(obj["metadata"].get("uid")),
            job_id=f"{name}-{self._suffix()}",
            cluster_name=cluster_name,
            started_at=now,
            running_at=now + self.cluster_start_seconds,
            cluster_deleted=not spec.get("rayClusterSpec"),
        )

    def _outcome_for(self, namespace: str, name: str, entrypoint: str) -> _Outcome:
        driver_error = entrypoint_error(entrypoint)
        if driver_error is not None:
            # The driver dies at once, whatever the test chose; KubeRay reports the job's last logs.
            return _Outcome(
                "FAILED",
                "Job entrypoint command failed with exit code 1, last available logs "
                f"(truncated to 20,000 chars):\n{driver_error}",
            )
        return (
            self._outcomes.get((namespace, name))
            or self._outcomes.get((None, name))
            or _Outcome("SUCCEEDED", "")
        )

    # shared helpers

    def _get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return cast(dict[str, Any], found)

    def _check(self, obj: dict[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        seen = (
            str(obj.get("kind")),
            str(metadata.get("namespace")),
            str(metadata.get("name")),
            str(metadata.get("resourceVersion")),
        )
        if seen in self._seen_versions:
            return
        self._seen_versions.add(seen)
        old = self._last_seen.get(seen[:3])
        self._last_seen[seen[:3]] = obj
        for problem in self._schema.errors(obj, old):
            self._violation(obj, problem)

    def _violation(self, obj: dict[str, Any], problem: str) -> None:
        metadata = obj.get("metadata") or {}
        violation = Violation(
            str(obj.get("kind")),
            str(metadata.get("namespace")),
            str(metadata.get("name")),
            str(metadata.get("resourceVersion")),
            problem,
        )
        # One report per problem and object, not one per status write that carries it along.
        if not any(
            (v.kind, v.namespace, v.name, v.problem)
            == (violation.kind, violation.namespace, violation.name, problem)
            for v in self.violations
        ):
            self.violations.append(violation)

    def _write_status(self, plural: str, obj: dict[str, Any], status: dict[str, Any]) -> None:
        current = copy.deepcopy(obj.get("status") or {})
        current.pop("lastUpdateTime", None)
        if current == status:
            return
        updated = copy.deepcopy(obj)
        updated["status"] = (
            {**status, "lastUpdateTime": _timestamp(time.time())} if plural == "rayservices" else status
        )
        for problem in self._schema.errors(updated):
            self._violation(updated, f"(written by fake KubeRay) {problem}")
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        self._custom.replace_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name, updated)

    def _new_cluster(
        self,
        owner: dict[str, Any],
        owner_kind: str,
        cluster_config: dict[str, Any],
        cluster_hash: str,
        state: _ServiceState | None,
        now: float,
    ) -> _Cluster:
        owner_name, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
        cluster = _Cluster(f"{owner_name}-{self._suffix()}", cluster_hash, now + self.cluster_start_seconds)
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "RayCluster",
            "metadata": {
                "name": cluster.name,
                "namespace": namespace,
                "labels": {
                    "ray.io/originated-from-cr-name": owner_name,
                    "ray.io/originated-from-crd": owner_kind,
                },
                "ownerReferences": [_owner_reference(owner)],
            },
            "spec": copy.deepcopy(cluster_config),
        }
        for problem in self._schema.errors(body):
            self._violation(body, f"(RayCluster made from {owner_kind} {owner_name}) {problem}")
        self._custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "rayclusters", body)
        if self._owner_gone(owner):
            self._delete_cluster(namespace, cluster.name)
        if state is not None:
            state.clusters_created.append(cluster.name)
        return cluster

    def _owner_gone(self, owner: dict[str, Any]) -> bool:
        """Whether `owner` was deleted while a child was being made for it. The garbage collector only
        reacts to an owner's removal, so a child created just after it would be left behind."""
        plural = "rayservices" if owner["kind"] == "RayService" else "rayjobs"
        current = self._get(plural, owner["metadata"]["namespace"], owner["metadata"]["name"])
        return current is None or current["metadata"].get("uid") != owner["metadata"]["uid"]

    def _delete_cluster(self, namespace: str, name: str) -> None:
        try:
            self._custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "rayclusters", name)
        except ApiException as error:
            if error.status != 404:
                raise

    def _suffix(self) -> str:
        return "".join(self._random.choices(string.ascii_lowercase + string.digits, k=5))


# --- pure helpers ---------------------------------------------------------------------------------------


def _cluster_hash(cluster_config: dict[str, Any]) -> str:
    """Like KubeRay's GenerateHashWithoutReplicasAndWorkersToDelete: the autoscaler's fields (replicas,
    min/max, workersToDelete), tolerations / scheduling gates that other controllers inject, and the
    cluster upgrade strategy do not make a new cluster."""
    spec = copy.deepcopy(cluster_config)
    spec.pop("upgradeStrategy", None)
    spec.pop("suspend", None)
    groups = [spec.get("headGroupSpec") or {}, *(spec.get("workerGroupSpecs") or [])]
    for index, group in enumerate(groups):
        pod_spec = (group.get("template") or {}).get("spec") or {}
        pod_spec.pop("tolerations", None)
        pod_spec.pop("schedulingGates", None)
        if index > 0:
            for muted in ("replicas", "minReplicas", "maxReplicas"):
                group.pop(muted, None)
            (group.get("scaleStrategy") or {}).pop("workersToDelete", None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class _ServeApps:
    """What Ray Serve makes of a serveConfigV2 string."""

    apps: dict[str, list[str]]  # application name -> deployment names the config declares
    broken: dict[str, str]  # application name -> Serve's DEPLOY_FAILED message (import path, args)
    refused: list[str]  # why Serve refuses the whole config (then nothing deploys)


# Cached: the status of a RayService is computed from the same config again and again; callers only read.
@functools.lru_cache(maxsize=1024)
def _serve_applications(serve_config: str) -> _ServeApps:
    refused = serve_config_errors(serve_config)
    if refused:
        return _ServeApps({}, {}, refused)
    apps: dict[str, list[str]] = {}
    broken: dict[str, str] = {}
    for app in yaml.safe_load(serve_config).get("applications") or []:
        name = str(app["name"])
        apps[name] = [str(d["name"]) for d in app.get("deployments") or [] if d.get("name")]
        error = app_build_error(app)
        if error is not None:
            broken[name] = error
    return _ServeApps(apps, broken, [])


def _app_statuses(
    apps: dict[str, list[str]], status: str, message: str, broken: dict[str, str] | None = None
) -> dict[str, Any]:
    deployment_status = {"RUNNING": "HEALTHY", "DEPLOYING": "UPDATING"}.get(status, "UNHEALTHY")
    result: dict[str, Any] = {}
    for app, deployments in apps.items():
        if broken and app in broken and status != "DEPLOYING":
            # The build task failed: Serve never created the app's deployments.
            result[app] = {"status": "DEPLOY_FAILED", "message": broken[app]}
            continue
        entry: dict[str, Any] = {"status": status}
        if message:
            entry["message"] = message
        if deployments:
            entry["serveDeploymentStatuses"] = {
                deployment: {"status": deployment_status, **({"message": message} if message else {})}
                for deployment in deployments
            }
        result[app] = entry
    return result


def _condition(
    previous: dict[Any, dict[str, Any]], kind: str, status: str, reason: str, message: str, generation: int
) -> dict[str, Any]:
    before = previous.get(kind) or {}
    moved = before.get("status") != status
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": _timestamp(time.time()) if moved else before["lastTransitionTime"],
        "observedGeneration": generation,
    }


def _job_end(outcome: _Outcome, now: float, status: dict[str, Any]) -> dict[str, Any]:
    info = {**(status.get("rayJobInfo") or {}), "endTime": _timestamp(now)}
    end: dict[str, Any] = {"jobStatus": outcome.outcome, "endTime": _timestamp(now), "rayJobInfo": info}
    if outcome.outcome == "FAILED":
        end.update(
            jobDeploymentStatus="Failed",
            reason="AppFailed",
            message=outcome.message or "Job entrypoint command failed with exit code 1",
            failed=int(status.get("failed") or 0) + 1,
        )
    else:
        default = "Job finished successfully." if outcome.outcome == "SUCCEEDED" else "Job was stopped."
        end.update(
            jobDeploymentStatus="Complete",
            message=outcome.message or default,
            succeeded=int(status.get("succeeded") or 0) + (outcome.outcome == "SUCCEEDED"),
        )
    return end


def _worker_pods(cluster_config: dict[str, Any]) -> int:
    return sum(
        int(group.get("replicas") or 0) * int(group.get("numOfHosts") or 1)
        for group in cluster_config.get("workerGroupSpecs") or []
    )


def _owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _timestamp(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_timestamp(value: Any) -> float | None:
    if not value:
        return None
    return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
