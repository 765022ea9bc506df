"""A stateful fake Azure Resource Manager for AKS agent pools, served over HTTP on 127.0.0.1.

It speaks enough of ARM for the real `azure-mgmt-containerservice` client: agent pool GET / PUT /
DELETE, long-running operations through `Azure-AsyncOperation` (and `Location` for deletes), Azure's
error bodies, bearer-token checks and `If-None-Match: *`. Operations advance when someone looks:
each GET of the pool or of its operation counts as one poll, so a controller that only GETs the pool
sees it go Creating → Succeeded just like one that polls the operation.

It refuses what ARM refuses, with ARM's 400 and error body: a vmSize that is neither in kairay's SKU
catalog nor named like an Azure size, a count outside 0..1000 (1..1000 for System pools), values
outside the API's enums (mode, osType, osSKU, type, scaleSetPriority), pool names AKS does not allow
(lowercase alphanumeric starting with a letter, at most 12 characters, 6 for Windows). Tests can make it
throttle (429 with Retry-After, like ARM's per-subscription limits) and make deletes fail.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from azure.core.credentials import AccessToken
from azure.core.credentials_async import AsyncTokenCredential

# The controller's own loopback auth, so that these tests exercise what `kairay controller` runs with.
from controller.nodes.aks import ARM_SCOPE, LoopbackAuthenticationPolicy
from presets.skus import SKUS

FAKE_TOKEN = "fake-arm-token"
LOCATION = "eastus"

_POOL_PATH = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.ContainerService"
    r"/managedClusters/(?P<cluster>[^/]+)/agentPools/(?P<pool>[^/]+)$",
    re.IGNORECASE,
)
_OPERATION_PATH = re.compile(
    r"^/subscriptions/[^/]+/providers/Microsoft\.ContainerService/locations/[^/]+"
    r"/(?P<kind>operations|operationresults)/(?P<id>[^/]+)$",
    re.IGNORECASE,
)
_BUSY_STATES = {"Creating", "Updating", "Deleting"}
# Azure's size names: Standard_<family><vCPUs>[-<constrained vCPUs>]<features>[_<accelerator>][_v<n>]
# (Standard_D4s_v3, Standard_M128-64ms, Standard_NC24ads_A100_v4, Standard_DS2_v2); families A..N.
_AZURE_VM_SIZE = re.compile(
    r"^Standard_[ABDEFGHLMN][A-Z]{0,2}[0-9]{1,3}(-[0-9]+)?[a-z]*(_[A-Z]+[0-9]+[A-Z]?)?(_v[0-9]+)?$"
)
_KNOWN_VM_SIZES = {name.lower() for name in SKUS}
_MAX_COUNT = 1000
# The AgentPool API's enums (2024-xx api-versions), as ARM checks them on PUT.
_ENUMS = {
    "mode": ("System", "User", "Gateway"),
    "osType": ("Linux", "Windows"),
    "osSKU": ("Ubuntu", "AzureLinux", "CBLMariner", "Windows2019", "Windows2022", "WindowsAnnual"),
    "type": ("VirtualMachineScaleSets", "AvailabilitySet", "VirtualMachines"),
    "scaleSetPriority": ("Spot", "Regular"),
    "scaleSetEvictionPolicy": ("Delete", "Deallocate"),
    "osDiskType": ("Managed", "Ephemeral"),
    "kubeletDiskType": ("OS", "Temporary"),
}
_POOL_NAME = re.compile(r"^[a-z][a-z0-9]*$")
# Fields only the service sets; a PUT body carrying them does not change them.
_READ_ONLY = {"provisioningState", "status", "currentOrchestratorVersion", "nodeImageVersion", "powerState"}


class FakeTokenCredential(AsyncTokenCredential):
    """Hands out a fixed dummy token, the one `FakeArm` accepts."""

    def __init__(self, token: str = FAKE_TOKEN) -> None:
        self.token = token
        self.requests = 0

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        self.requests += 1
        return AccessToken(self.token, int(time.time()) + 3600)

    async def close(self) -> None:
        """Nothing to release."""

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def loopback_client_kwargs(credential: AsyncTokenCredential) -> dict[str, Any]:
    """`ContainerServiceClient` keyword arguments for talking to a `FakeArm`."""
    return {"authentication_policy": LoopbackAuthenticationPolicy(credential, ARM_SCOPE), "retry_total": 0}


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: Any
    status: int = 0

    @property
    def pool(self) -> str | None:
        match = _POOL_PATH.match(self.path)
        return match["pool"] if match else None


@dataclass
class _Fault:
    code: str
    message: str
    status: int


@dataclass
class _Operation:
    id: str
    pool_key: str
    pool_name: str
    kind: str  # create | update | delete
    polls_left: int
    error: dict[str, str] | None
    status: str = "InProgress"
    start_time: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


class _ArmError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.body = {"error": {"code": code, "message": message}}


class FakeArm:
    """The fake ARM endpoint. Use as a context manager, or `start()` / `stop()`.

    Hooks, called outside the fake's lock after the state changed (so they may take their time):
    `on_pool_succeeded(pool_name, pool_resource)` after a create or update succeeded, and
    `on_pool_deleted(pool_name)` after a delete finished. They run before the answer that shows the
    change is sent, as in AKS, where a pool's VMs have registered as nodes by the time it succeeds.
    """

    def __init__(self, *, polls_until_done: int = 2, token: str = FAKE_TOKEN) -> None:
        self.polls_until_done = polls_until_done
        self.token = token
        self.on_pool_succeeded: Callable[[str, dict[str, Any]], None] | None = None
        self.on_pool_deleted: Callable[[str], None] | None = None
        self._lock = threading.Lock()
        self._pools: dict[str, dict[str, Any]] = {}
        self._operations: dict[str, _Operation] = {}
        self._requests: list[RecordedRequest] = []
        self._put_faults: list[_Fault] = []
        self._delete_faults: list[_Fault] = []
        self.throttle_every = 0  # answer every Nth request 429 (0: never)
        self.throttled = False  # answer every request 429 while set
        self.retry_after_seconds = 1
        self._counted = 0
        self._operation_fault: dict[str, str] | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> FakeArm:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-arm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeArm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "FakeArm is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # fault injection

    def fail_next_put(
        self, code: str = "QuotaExceeded", message: str | None = None, status: int = 409
    ) -> None:
        """The next PUT of any pool answers `status` with this Azure error, synchronously."""
        with self._lock:
            self._put_faults.append(_Fault(code, message or f"fake {code}", status))

    def fail_operation(self, code: str = "ProvisioningFailed", message: str | None = None) -> None:
        """The next create/update operation started ends Failed with this error."""
        with self._lock:
            self._operation_fault = {"code": code, "message": message or f"fake {code}"}

    def fail_next_delete(
        self, code: str = "OperationNotAllowed", message: str | None = None, status: int = 409
    ) -> None:
        """The next DELETE of an existing pool answers `status` with this Azure error, and the pool stays."""
        with self._lock:
            self._delete_faults.append(_Fault(code, message or f"fake {code}", status))

    def clear_faults(self) -> None:
        with self._lock:
            self._put_faults.clear()
            self._delete_faults.clear()
            self.throttle_every = 0
            self.throttled = False
            self._operation_fault = None

    # inspection

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def puts(self, pool: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "PUT" and (pool is None or r.pool == pool)]

    def creates(self, pool: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.puts(pool) if r.status == 201]

    def deletes(self, pool: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "DELETE" and (pool is None or r.pool == pool)]

    def pool(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            for resource in self._pools.values():
                if resource["name"].lower() == name.lower():
                    return copy.deepcopy(resource)
        return None

    def pool_names(self) -> list[str]:
        with self._lock:
            return sorted(r["name"] for r in self._pools.values())

    # request handling (called from the server's threads)

    def handle(self, req: RecordedRequest) -> tuple[int, dict[str, str], Any]:
        callbacks: list[Callable[[], None]] = []
        with self._lock:
            try:
                status, headers, body = self._dispatch(req, callbacks)
            except _ArmError as err:
                status, headers, body = err.status, err.headers, err.body
            req.status = status
            self._requests.append(req)
        for callback in callbacks:
            callback()
        return status, headers, body

    def _dispatch(
        self, req: RecordedRequest, callbacks: list[Callable[[], None]]
    ) -> tuple[int, dict[str, str], Any]:
        if req.headers.get("authorization") != f"Bearer {self.token}":
            raise _ArmError(
                401, "AuthenticationFailed", "Authentication failed: missing or invalid bearer token."
            )
        self._counted += 1
        if self.throttled or (self.throttle_every and self._counted % self.throttle_every == 0):
            raise _ArmError(
                429,
                "TooManyRequests",
                "The request is being throttled as the limit has been reached for operation type.",
                {"Retry-After": str(self.retry_after_seconds)},
            )
        if "api-version" not in req.query:
            raise _ArmError(400, "MissingApiVersionParameter", "The api-version query parameter is required.")
        if match := _POOL_PATH.match(req.path):
            key = req.path.lower()
            if req.method == "GET":
                return self._get_pool(key, callbacks)
            if req.method == "PUT":
                return self._put_pool(key, match["pool"], req, callbacks)
            if req.method == "DELETE":
                return self._delete_pool(key, match["pool"], req, callbacks)
            raise _ArmError(405, "MethodNotAllowed", f"{req.method} is not supported")
        if (match := _OPERATION_PATH.match(req.path)) and req.method == "GET":
            return self._get_operation(match["kind"].lower(), match["id"], callbacks)
        raise _ArmError(404, "InvalidResourceType", f"no fake ARM resource at {req.path}")

    def _get_pool(self, key: str, callbacks: list[Callable[[], None]]) -> tuple[int, dict[str, str], Any]:
        self._advance(key, callbacks)
        resource = self._pools.get(key)
        if resource is None:
            raise _ArmError(
                404, "ResourceNotFound", f"The Resource '{key.rsplit('/', 1)[-1]}' was not found."
            )
        return 200, {}, resource

    def _put_pool(
        self, key: str, name: str, req: RecordedRequest, callbacks: list[Callable[[], None]]
    ) -> tuple[int, dict[str, str], Any]:
        if self._put_faults:
            fault = self._put_faults.pop(0)
            raise _ArmError(fault.status, fault.code, fault.message)
        existing = self._pools.get(key)
        if existing is not None and req.headers.get("if-none-match") == "*":
            raise _ArmError(412, "PreconditionFailed", f"Agent pool {name} already exists.")
        if existing is not None and existing["properties"]["provisioningState"] in _BUSY_STATES:
            raise _ArmError(
                409,
                "OperationNotAllowed",
                f"Operation is not allowed because there's an in progress operation on agent pool {name}.",
            )
        props = _validated_properties(name, req.body, existing)
        creating = existing is None
        resource = {
            "id": req.path,
            "name": name,
            "type": "Microsoft.ContainerService/managedClusters/agentPools",
            "properties": {
                "osType": "Linux",
                "osDiskSizeGB": 128,
                "type": "VirtualMachineScaleSets",
                "orchestratorVersion": "1.31.0",
                **props,
                "currentOrchestratorVersion": "1.31.0",
                "provisioningState": "Creating" if creating else "Updating",
                "powerState": {"code": "Running"},
            },
        }
        self._pools[key] = resource
        op = self._start(key, name, "create" if creating else "update", self._operation_fault)
        self._operation_fault = None
        body = copy.deepcopy(resource)
        self._advance(key, callbacks, polls=0)
        return (201 if creating else 200), self._lro_headers(req, op, location=False), body

    def _delete_pool(
        self, key: str, name: str, req: RecordedRequest, callbacks: list[Callable[[], None]]
    ) -> tuple[int, dict[str, str], Any]:
        resource = self._pools.get(key)
        if resource is None:
            return 204, {}, None
        if self._delete_faults:
            fault = self._delete_faults.pop(0)
            raise _ArmError(fault.status, fault.code, fault.message)
        for op in self._operations.values():
            if op.pool_key == key and op.status == "InProgress":
                op.status = "Canceled"
        resource["properties"]["provisioningState"] = "Deleting"
        op = self._start(key, name, "delete", None)
        self._advance(key, callbacks, polls=0)
        return 202, self._lro_headers(req, op, location=True), None

    def _get_operation(
        self, kind: str, op_id: str, callbacks: list[Callable[[], None]]
    ) -> tuple[int, dict[str, str], Any]:
        op = self._operations.get(op_id)
        if op is None:
            raise _ArmError(404, "NotFound", f"Operation {op_id} was not found.")
        self._advance(op.pool_key, callbacks)
        if kind == "operationresults":
            if op.status == "InProgress":
                return 202, {"Retry-After": "0"}, None
            resource = self._pools.get(op.pool_key)
            return (200, {}, resource) if resource is not None else (204, {}, None)
        body: dict[str, Any] = {"id": op.id, "name": op.id, "status": op.status, "startTime": op.start_time}
        if op.status == "Failed" and op.error is not None:
            body["error"] = op.error
        return 200, {}, body

    def _start(self, key: str, name: str, kind: str, error: dict[str, str] | None) -> _Operation:
        op = _Operation(uuid.uuid4().hex, key, name, kind, self.polls_until_done, error)
        self._operations[op.id] = op
        return op

    def _lro_headers(self, req: RecordedRequest, op: _Operation, *, location: bool) -> dict[str, str]:
        sub = req.path.split("/")[2]
        base = (
            f"{self.base_url}/subscriptions/{sub}/providers/Microsoft.ContainerService/locations/{LOCATION}"
        )
        version = req.query["api-version"]
        headers = {
            "Azure-AsyncOperation": f"{base}/operations/{op.id}?api-version={version}",
            "Retry-After": "0",
        }
        if location:
            headers["Location"] = f"{base}/operationresults/{op.id}?api-version={version}"
        return headers

    def _advance(self, key: str, callbacks: list[Callable[[], None]], polls: int = 1) -> None:
        """Count `polls` looks at the pool's running operation, finishing it when none are left."""
        for op in self._operations.values():
            if op.pool_key != key or op.status != "InProgress":
                continue
            op.polls_left -= polls
            if op.polls_left <= 0:
                self._finish(op, callbacks)

    def _finish(self, op: _Operation, callbacks: list[Callable[[], None]]) -> None:
        resource = self._pools.get(op.pool_key)
        name = op.pool_name
        if op.kind == "delete":
            op.status = "Succeeded"
            self._pools.pop(op.pool_key, None)
            if self.on_pool_deleted is not None:
                deleted_hook = self.on_pool_deleted
                callbacks.append(lambda: deleted_hook(name))
            return
        assert resource is not None
        props = resource["properties"]
        if op.error is not None:
            op.status = "Failed"
            props["provisioningState"] = "Failed"
            props["status"] = {"provisioningError": dict(op.error)}
            return
        op.status = "Succeeded"
        props["provisioningState"] = "Succeeded"
        props.pop("status", None)
        if self.on_pool_succeeded is not None:
            succeeded_hook = self.on_pool_succeeded
            snapshot = copy.deepcopy(resource)
            callbacks.append(lambda: succeeded_hook(name, snapshot))


def _invalid(parameter: str, detail: str) -> _ArmError:
    return _ArmError(
        400, "InvalidParameter", f"The value of parameter agentPoolProfile.{parameter} is invalid. {detail}"
    )


def _validated_properties(name: str, body: Any, existing: dict[str, Any] | None) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
        raise _ArmError(400, "InvalidRequestContent", "The request body must have a 'properties' object.")
    props = {k: v for k, v in body["properties"].items() if k not in _READ_ONLY}
    for field_name, allowed in _ENUMS.items():
        value = props.get(field_name)
        if value is not None and value not in allowed:
            raise _invalid(field_name, f"'{value}' is not one of {', '.join(allowed)}.")
    windows = (props.get("osType") or (existing or {}).get("properties", {}).get("osType")) == "Windows"
    longest = 6 if windows else 12
    if not _POOL_NAME.match(name) or len(name) > longest:
        raise _ArmError(
            400,
            "InvalidAgentPoolName",
            f"Agent pool name '{name}' is invalid: it must start with a lowercase letter, contain only "
            f"lowercase letters and numbers, and be at most {longest} characters long.",
        )
    count = props.get("count")
    least = 1 if props.get("mode") == "System" else 0
    if isinstance(count, bool) or not isinstance(count, int) or not least <= count <= _MAX_COUNT:
        raise _invalid("count", f"Count must be between {least} and {_MAX_COUNT}.")
    if existing is None:
        vm_size = props.get("vmSize")
        if not vm_size:
            raise _ArmError(400, "InvalidParameter", "The value of parameter vmSize is required.")
        if str(vm_size).lower() not in _KNOWN_VM_SIZES and not _AZURE_VM_SIZE.match(str(vm_size)):
            raise _ArmError(
                400,
                "VMSizeNotSupported",
                f"Virtual Machine size: '{vm_size}' is not supported for agent pool '{name}' in {LOCATION}.",
            )
    elif (
        props.get("vmSize", existing["properties"]["vmSize"]).lower()
        != existing["properties"]["vmSize"].lower()
    ):
        raise _ArmError(400, "PropertyChangeNotAllowed", "Changing property 'vmSize' is not allowed.")
    return props


def _handler_for(arm: FakeArm) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Idle keep-alive connections from the SDK's aiohttp pool must not pin threads forever.
        timeout = 30

        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            request = RecordedRequest(
                method=self.command,
                path=url.path,
                query=dict(parse_qsl(url.query)),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
            status, headers, payload = arm.handle(request)
            data = json.dumps(payload).encode() if payload is not None else b""
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if data:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-ms-request-id", str(uuid.uuid4()))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: tests read `FakeArm.requests` instead."""

    return Handler
