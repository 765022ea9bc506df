"""A stateful fake Kubernetes API server on 127.0.0.1 for the real `kubernetes` client and kopf.

    with FakeApiServer() as server:
        server.write_kubeconfig(tmp_path / "kubeconfig")
        api = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(server.client_configuration()))

It serves discovery, CRUD, patches (merge, strategic, JSON, apply), list + watch with resume,
bookmarks and 410 Gone, the status and scale subresources, generation, finalizers, ownerReference
garbage collection and namespace termination; CRD-backed objects are validated by
`kairay.api.crds.schema.validate_object` (or any `validator`). Tests can inject errors and count
requests. The server runs in a background thread with its own event loop; all state lives there.

Where the real kubectl looks it answers as kube-apiserver does: OpenAPI v2 (JSON only) and v3
built from the CRDs' schemas, Table responses from `additionalPrinterColumns`, every stored custom
object in every served version of its CRD (`conversion: None`), 415 for strategic merge patches of
custom resources, and `Warning` headers for unknown fields under `fieldValidation=Warn` (the
default; Strict refuses them, Ignore drops them silently).

Requests are authorized by RBAC over the stored Roles, ClusterRoles and bindings: the kubeconfig's
default token is the admin's (system:masters), `service_account_token` issues one for a
ServiceAccount, which then gets a 403 for whatever its bindings do not grant.

There are no pods, so the service proxy (`/api/v1/namespaces/{ns}/services/{name}[:port]/proxy/{path}`)
forwards to whatever URL a test registers for the Service with `set_service_proxy`, and answers
503 "no endpoints available" like the real one for a Service with nothing behind it.

Standalone: `python -m harness.fake_apiserver --port 0 --kubeconfig out.yaml [--crd FILE]`.

One module: the fake's public face (start and stop, CRD installation, error injection, counters)
over `apiserver/`.
"""

from __future__ import annotations

import argparse
import asyncio
import builtins
import concurrent.futures
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import aiohttp
import yaml
from aiohttp import web

from harness.apiserver.errors import ApiError
from harness.apiserver.http import (
    ADMIN_TOKEN,
    PROXY_VERBS,
    WRITE_VERBS,
    ApiServerApp,
    FaultRule,
    RequestRecord,
)
from harness.apiserver.patches import JsonObj, deep_copy
from harness.apiserver.rbac import Attributes, service_account
from harness.apiserver.resources import ResourceRegistry, ResourceType
from harness.apiserver.selectors import make_filter
from harness.apiserver.store import CRDS, MERGE_PATCH, Defaulter, Store, Validator

if TYPE_CHECKING:
    import kubernetes.client

__all__ = ["WRITE_VERBS", "FakeApiServer", "FaultRule", "RequestRecord", "crd_defaulter", "crd_validator"]

T = TypeVar("T")
# `FakeApiServer.list` shadows the builtin inside the class body.
JsonList = builtins.list[JsonObj]
# /api/v1/namespaces/{ns}/services/{[scheme:]name[:port]}/proxy[/{path}]
_SERVICE_PROXY = re.compile(r"^/api/v1/namespaces/([^/]+)/services/([^/]+)/proxy(?:/(.*))?$")


def crd_validator(
    crd: Mapping[str, Any], obj: Mapping[str, Any], old: Mapping[str, Any] | None
) -> Sequence[Any]:
    """The product's CRD validator (structural schema + CEL), imported when first needed so this
    harness works before, and without, `kairay.api.crds.schema`."""
    try:
        from kairay.api.crds.schema import validate_object
    except ImportError:
        return []
    return list(validate_object(crd, obj, old))


def crd_defaulter(crd: Mapping[str, Any], obj: Mapping[str, Any]) -> JsonObj:
    """The product's schema defaulting (`kairay.api.crds.schema.apply_defaults`), imported lazily."""
    try:
        from kairay.api.crds.schema import apply_defaults
    except ImportError:
        return dict(obj)
    return apply_defaults(crd, obj)


class FakeApiServer:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        history_size: int = 10_000,
        bookmark_interval: float = 5.0,
        validator: Validator | None = crd_validator,
        defaulter: Defaulter | None = crd_defaulter,
    ) -> None:
        """`history_size` is the number of watch events retained per resource for resuming watches
        (older resourceVersions get 410 Gone); `bookmark_interval` is how often an idle watch that
        allows bookmarks gets one; `validator=None` turns CRD validation off (and with it pruning of
        undeclared fields), `defaulter=None` CRD schema defaulting."""
        self.host = host
        self.port = port
        self.registry = ResourceRegistry()
        self.store = Store(self.registry, history_size=history_size, validator=validator, defaulter=defaulter)
        self.app = ApiServerApp(self.store, self.registry, bookmark_interval=bookmark_interval)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        # (namespace, service name) -> base URL the service proxy forwards to
        self._service_targets: dict[tuple[str, str], str] = {}

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("the fake API server is already running")
        loop = asyncio.new_event_loop()
        self.store.schedule = loop.call_soon
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(loop, started), name="fake-apiserver", daemon=True
        )
        self._thread.start()
        started.result(timeout=30)
        self._loop = loop
        return self

    def _run(self, loop: asyncio.AbstractEventLoop, started: concurrent.futures.Future[None]) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            started.set_exception(exc)
            loop.close()
            return
        started.set_result(None)
        loop.run_forever()
        loop.close()

    async def _serve(self) -> None:
        # handler_cancellation: a watch whose client disconnects ends at once instead of at its
        # next write, so idle abandoned watches don't pile up.
        app = self.app.make_app()
        app.middlewares.append(self._service_proxy)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024, reuse_address=True)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]
        self.app.server_address = f"{self.host}:{self.port}"

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        self._loop = self._thread = None
        self.store.schedule = lambda fn: fn()

    async def _shutdown(self) -> None:
        self.app.close_streams()
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- service proxy -----------------------------------------------------------------------------

    def set_service_proxy(self, namespace: str, name: str, url: str | None) -> None:
        """Forward the service proxy of Service `namespace/name` to `url` (what its endpoints would
        serve); None leaves the Service without endpoints again."""

        def set_target() -> None:
            if url is None:
                self._service_targets.pop((namespace, name), None)
            else:
                self._service_targets[(namespace, name)] = url.rstrip("/")

        self._call(set_target)

    @web.middleware
    async def _service_proxy(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        match = _SERVICE_PROXY.match(request.path)
        if match is None:
            return await handler(request)
        namespace, target, path = match.group(1), match.group(2), match.group(3) or ""
        # `name`, `name:port` or `scheme:name:port`, port by name or number.
        parts = target.split(":")
        name = parts[1] if len(parts) == 3 else parts[0]
        port = parts[-1] if len(parts) > 1 else ""
        started = time.monotonic()
        verb = PROXY_VERBS.get(request.method, request.method.lower())
        self.app.metrics.counts[(verb, "services/proxy")] += 1
        user = ""
        try:
            who = self.app.authenticate(request)
            user = who.user
            self.app.authorizer.check(who, Attributes(verb, "", "services/proxy", namespace, name))
            response = await self._forward(request, namespace, name, port, path)
        except ApiError as exc:
            response = web.json_response(exc.status(), status=exc.code)
        self.app.metrics.log.append(
            RequestRecord(
                method=request.method,
                path=request.path,
                query=request.query_string,
                content_type="",
                verb=verb,
                resource="services/proxy",
                namespace=namespace,
                name=name,
                code=response.status,
                duration=time.monotonic() - started,
                user=user,
            )
        )
        return response

    async def _forward(
        self, request: web.Request, namespace: str, name: str, port: str, path: str
    ) -> web.Response:
        service = self.store.find(self.registry.find("services").storage_key, namespace, name)
        if service is None:
            raise ApiError(404, f'services "{name}" not found')
        ports = service.get("spec", {}).get("ports") or []
        if port and not any(port in (str(p.get("name", "")), str(p.get("port", ""))) for p in ports):
            raise ApiError(503, f'no service port "{port}" found for service "{name}"')
        base = self._service_targets.get((namespace, name))
        if base is None:
            raise ApiError(503, f'no endpoints available for service "{name}"')
        url = f"{base}/{path}" + (f"?{request.query_string}" if request.query_string else "")
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.request(request.method, url, data=await request.read()) as answer,
            ):
                body = await answer.read()
                return web.Response(body=body, status=answer.status, content_type=answer.content_type)
        except aiohttp.ClientError as exc:
            raise ApiError(503, f"error trying to reach service: {exc}") from None

    def _call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the server's loop (where all state lives) and return its result."""
        loop = self._loop
        if loop is None or (self._thread is not None and threading.current_thread() is self._thread):
            return fn()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return future.result(timeout=30)

    # --- client configuration --------------------------------------------------------------------

    def kubeconfig(self, namespace: str = "default", token: str = ADMIN_TOKEN) -> dict[str, Any]:
        """A kubeconfig for the admin (system:masters), or for whoever `token` authenticates."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": token}}],
            "contexts": [
                {"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}
            ],
            "current-context": "fake",
        }

    def write_kubeconfig(
        self, path: str | Path, namespace: str = "default", token: str = ADMIN_TOKEN
    ) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.kubeconfig(namespace, token)))
        return path

    def service_account_token(self, namespace: str, name: str) -> str:
        """A bearer token for ServiceAccount `namespace/name` (what the kubelet mounts into its pods):
        its requests are allowed what RBAC bindings grant the account, and nothing else."""
        token = f"sa-{namespace}-{name}-{uuid.uuid4().hex}"
        identity = service_account(namespace, name)
        self._call(lambda: self.app.tokens.__setitem__(token, identity))
        return token

    def client_configuration(self) -> kubernetes.client.Configuration:
        import kubernetes.client

        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        configuration.api_key = {"authorization": ADMIN_TOKEN}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        return configuration

    def api_client(self) -> kubernetes.client.ApiClient:
        import kubernetes.client

        return kubernetes.client.ApiClient(self.client_configuration())

    # --- CRDs ------------------------------------------------------------------------------------

    def register_crd(self, crd: Mapping[str, Any]) -> JsonObj:
        """Create (or replace) a CustomResourceDefinition, as `kubectl apply -f crd.yaml` would."""

        def register() -> JsonObj:
            rt = self.store.type_for(CRDS)
            name = crd.get("metadata", {}).get("name", "")
            old = self.store.find(CRDS, None, name)
            if old is None:
                return deep_copy(self.store.create(rt, None, crd))
            body = {
                **deep_copy(dict(crd)),
                "metadata": {**crd["metadata"], "resourceVersion": old["metadata"]["resourceVersion"]},
            }
            return deep_copy(self.store.update(rt, None, name, body)[0])

        return self._call(register)

    def load_crds(self, path: str | Path) -> list[JsonObj]:
        """Register every CRD in a (multi-document) YAML file; other documents are ignored."""
        docs = yaml.safe_load_all(Path(path).read_text())
        return [
            self.register_crd(d)
            for d in docs
            if isinstance(d, dict) and d.get("kind") == "CustomResourceDefinition"
        ]

    def register_minimal_crd(
        self,
        group: str,
        version: str,
        kind: str,
        plural: str | None = None,
        *,
        namespaced: bool = True,
        short_names: Iterable[str] = (),
        status_subresource: bool = True,
        versions: Iterable[str] = (),
    ) -> JsonObj:
        """A schemaless CRD (anything goes, status subresource on) for types whose real CRD is
        too big to bother with, such as KubeRay's. `versions` adds served, non-storage versions."""
        plural = plural or f"{kind.lower()}s"
        schema = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
        return self.register_crd(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.{group}"},
                "spec": {
                    "group": group,
                    "scope": "Namespaced" if namespaced else "Cluster",
                    "names": {
                        "plural": plural,
                        "singular": kind.lower(),
                        "kind": kind,
                        "listKind": f"{kind}List",
                        "shortNames": list(short_names),
                    },
                    "versions": [
                        {
                            "name": v,
                            "served": True,
                            "storage": v == version,
                            "schema": schema,
                            **({"subresources": {"status": {}}} if status_subresource else {}),
                        }
                        for v in (version, *versions)
                    ],
                },
            }
        )

    # --- direct store access for tests ------------------------------------------------------------

    def resource_type(self, resource: str) -> ResourceType:
        """Resolve a plural, `plural.group`, kind or short name (preferred version)."""
        return self._call(lambda: self.registry.find(resource))

    def get(self, resource: str, namespace: str | None, name: str) -> JsonObj | None:
        def get() -> JsonObj | None:
            rt = self.registry.find(resource)
            obj = self.store.find(rt.storage_key, namespace, name)
            return deep_copy(obj) if obj is not None else None

        return self._call(get)

    def list(
        self, resource: str, namespace: str | None = None, label_selector: str | None = None
    ) -> JsonList:
        def list_() -> JsonList:
            rt = self.registry.find(resource)
            predicate = make_filter(label_selector, None, frozenset())
            return [deep_copy(o) for o in self.store.select(rt, namespace, predicate)[0]]

        return self._call(list_)

    def create(self, obj: Mapping[str, Any]) -> JsonObj:
        """Create through the same rules as a POST (validation, defaults, events)."""

        def create() -> JsonObj:
            rt = self._type_of(obj)
            return deep_copy(self.store.create(rt, obj.get("metadata", {}).get("namespace"), obj))

        return self._call(create)

    def patch(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        patch_type: str = MERGE_PATCH,
        subresource: str | None = None,
    ) -> JsonObj:
        def patch_() -> JsonObj:
            rt = self.registry.find(resource)
            return deep_copy(
                self.store.patch(rt, namespace, name, patch_type, patch, subresource=subresource)[0]
            )

        return self._call(patch_)

    def delete(
        self, resource: str, namespace: str | None, name: str, *, propagation_policy: str | None = None
    ) -> JsonObj:
        def delete() -> JsonObj:
            rt = self.registry.find(resource)
            return deep_copy(self.store.delete(rt, namespace, name, propagation=propagation_policy)[0])

        return self._call(delete)

    def _type_of(self, obj: Mapping[str, Any]) -> ResourceType:
        api_version, kind = str(obj.get("apiVersion", "")), obj.get("kind")
        group, _, version = api_version.rpartition("/")
        for rt in self.registry.all_types():
            if (rt.group, rt.version, rt.kind) == (group, version, kind):
                return rt
        raise KeyError(f"no resource type for {api_version} {kind}")

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> None:
        """Poll until `predicate()` holds; for effects the cluster applies asynchronously (GC)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            time.sleep(interval)

    # --- knobs -----------------------------------------------------------------------------------

    @property
    def validator(self) -> Validator | None:
        return self.store.validator

    @validator.setter
    def validator(self, validator: Validator | None) -> None:
        self.store.validator = validator

    @property
    def defaulter(self) -> Defaulter | None:
        return self.store.defaulter

    @defaulter.setter
    def defaulter(self, defaulter: Defaulter | None) -> None:
        self.store.defaulter = defaulter

    @property
    def history_size(self) -> int:
        return self.store.history_size

    @history_size.setter
    def history_size(self, size: int) -> None:
        def resize() -> None:
            self.store.history_size = size
            self.store.trim_history()

        self._call(resize)

    @property
    def resource_version(self) -> int:
        """The current (global) resourceVersion."""
        return self._call(lambda: self.store.rv)

    # --- error injection and accounting ----------------------------------------------------------

    def inject_errors(
        self,
        resource: str = "*",
        *,
        code: int = 409,
        count: int = 1,
        verbs: Iterable[str] = WRITE_VERBS,
        namespace: str | None = None,
        name: str | None = None,
        message: str | None = None,
    ) -> FaultRule:
        """Answer the next `count` matching requests with `code` (409 Conflict, 500, 503, 429...).

        `resource` is a plural, `plural.group`, kind or short name ("*" for any); `verbs` are API
        verbs (default: writes). The returned rule's `remaining` and `hits` show what happened."""
        rule = FaultRule(
            resource=resource,
            verbs=frozenset(verbs),
            code=code,
            remaining=count,
            namespace=namespace,
            name=name,
            message=message,
        )
        self._call(lambda: self.app.faults.append(rule))
        return rule

    def clear_errors(self) -> None:
        self._call(self.app.faults.clear)

    def drop_watches(self) -> None:
        """End every open watch stream, as an API server restart or an idle proxy does; clients
        resume from their last resourceVersion (a 410 once `history_size` no longer covers it)."""
        self._call(self.app.close_streams)

    @property
    def request_counts(self) -> Counter[tuple[str, str]]:
        """Requests served so far, by (verb, resource): `("create", "workspaces")`,
        `("patch", "workspaces/status")`, `("watch", "rayservices")`; non-resource URLs count
        under (method, path), e.g. `("get", "/apis")`."""
        return self._call(lambda: Counter(self.app.metrics.counts))

    @property
    def request_log(self) -> builtins.list[RequestRecord]:
        return self._call(lambda: list(self.app.metrics.log))

    def count_requests(self, verb: str | None = None, resource: str | None = None) -> int:
        return sum(
            n for (v, r), n in self.request_counts.items() if verb in (None, v) and resource in (None, r)
        )

    def reset_request_stats(self) -> None:
        def reset() -> None:
            self.app.metrics.counts.clear()
            self.app.metrics.log.clear()

        self._call(reset)

    @property
    def watch_count(self) -> int:
        """Open watch streams."""
        return self._call(self.store.watcher_count)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the fake Kubernetes API server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--kubeconfig", type=Path, help="write a kubeconfig for the server here")
    parser.add_argument("--crd", type=Path, action="append", default=[], help="YAML file of CRDs to register")
    parser.add_argument("--history-size", type=int, default=10_000)
    parser.add_argument("--no-validation", action="store_true", help="don't validate custom resources")
    args = parser.parse_args(argv)
    server = FakeApiServer(
        host=args.host,
        port=args.port,
        history_size=args.history_size,
        validator=None if args.no_validation else crd_validator,
        defaulter=None if args.no_validation else crd_defaulter,
    )
    for path in args.crd:
        server.load_crds(path)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    with server:
        print(f"fake API server listening on {server.url}", flush=True)
        if args.kubeconfig:
            print(f"kubeconfig written to {server.write_kubeconfig(args.kubeconfig)}", flush=True)
        stopped.wait()


if __name__ == "__main__":
    main()
