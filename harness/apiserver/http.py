"""The HTTP face of the fake API server: Kubernetes REST paths, watch streams, error injection and
request accounting, on aiohttp (so many long-lived watch connections cost one coroutine each).

One module: every REST route shares the request parsing, authorization, error injection and
accounting; the state lives in `store.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import yaml
from aiohttp import web

from harness.apiserver import errors
from harness.apiserver.errors import ApiError
from harness.apiserver.openapi import v2_document, v3_discovery, v3_document
from harness.apiserver.patches import JsonObj, json_patch, merge_patch
from harness.apiserver.rbac import ADMIN, Attributes, Authorizer, Identity
from harness.apiserver.resources import SERVER_VERSION, ResourceRegistry, ResourceType
from harness.apiserver.selectors import make_filter
from harness.apiserver.store import (
    APPLY_PATCH,
    CRDS,
    FIELD_VALIDATIONS,
    JSON_PATCH,
    MERGE_PATCH,
    PATCH_TYPES,
    WARN,
    Store,
)
from harness.apiserver.tables import table, table_version

log = logging.getLogger(__name__)

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
ADMIN_TOKEN = "fake-token"
# RBAC's verb for a request to a subresource that is not a CRUD endpoint (the service proxy).
PROXY_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_STOP = None  # queued to a watch stream to end it (server shutdown)


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    query: str
    content_type: str
    verb: str
    resource: str  # plural, "plural/status", or the path of a non-resource URL
    namespace: str | None
    name: str | None
    code: int
    duration: float
    group: str = ""  # the API group of a resource request
    user: str = ""  # who made it ("" when unauthenticated)


@dataclass
class FaultRule:
    """Answer the next `remaining` matching requests with `code` instead of serving them."""

    resource: str
    verbs: frozenset[str]
    code: int
    remaining: int
    namespace: str | None = None
    name: str | None = None
    message: str | None = None
    hits: int = 0

    def matches(self, verb: str, rt: ResourceType, namespace: str | None, name: str | None) -> bool:
        wanted = self.resource.lower()
        return (
            self.remaining > 0
            and verb in self.verbs
            and wanted in ("*", rt.plural, f"{rt.plural}.{rt.group}", rt.kind.lower(), *rt.short_names)
            and self.namespace in (None, namespace)
            and self.name in (None, name)
        )

    def error(self, rt: ResourceType, name: str | None) -> ApiError:
        if self.code == 409:
            return errors.conflict(rt.plural, rt.group, name or "", self.message or errors.STALE_OBJECT)
        return ApiError(self.code, self.message or f"injected fault ({self.code})")


@dataclass
class Metrics:
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    log: list[RequestRecord] = field(default_factory=list)


@dataclass
class _Route:
    verb: str
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=_dumps(obj), status=status, content_type="application/json")


def _error(exc: ApiError) -> web.Response:
    response = _json(exc.status(), exc.code)
    if exc.code == 429:
        response.headers["Retry-After"] = "1"
    return response


def _view(obj: JsonObj, rt: ResourceType) -> JsonObj:
    """The stored object as the requested version shows it (one storage, several CRD versions)."""
    return obj if obj.get("apiVersion") == rt.api_version else {**obj, "apiVersion": rt.api_version}


def _warning(message: str) -> str:
    """A `Warning` header value (RFC 7234 form, as the real server sends them)."""
    escaped = message.replace("\\", "\\\\").replace('"', '\\"')
    return f'299 - "{escaped}"'


def _flag(value: str | None) -> bool:
    return value in ("true", "1", "True")


class ApiServerApp:
    def __init__(self, store: Store, registry: ResourceRegistry, *, bookmark_interval: float) -> None:
        self.store = store
        self.registry = registry
        self.bookmark_interval = bookmark_interval
        self.faults: list[FaultRule] = []
        self.metrics = Metrics()
        self.server_address = "127.0.0.1:0"
        # Bearer token -> who it authenticates; the admin's is in every kubeconfig by default.
        self.tokens: dict[str, Identity] = {ADMIN_TOKEN: ADMIN}
        self.authorizer = Authorizer(store)
        self._streams: set[asyncio.Queue[tuple[str, JsonObj] | None]] = set()

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    def authenticate(self, request: web.Request) -> Identity:
        """The caller by its bearer token; 401 for a token nobody issued. A request without one is
        the admin's: this server speaks plain HTTP, over which kubectl sends no bearer token (a
        real cluster's TLS is what it waits for), and kubectl must still reach it."""
        header = request.headers.get("Authorization")
        if header is None:
            return ADMIN
        scheme, _, token = header.partition(" ")
        who = self.tokens.get(token) if scheme.lower() == "bearer" else None
        if who is None:
            raise ApiError(401, "Unauthorized")
        return who

    def close_streams(self) -> None:
        for queue in self._streams:
            queue.put_nowait(_STOP)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        parts = [p for p in request.path.split("/") if p]
        route: _Route | None = None
        routing_error: ApiError | None = None
        try:
            route = self._route(request.method, parts, request.query)
        except ApiError as exc:
            routing_error = exc
        verb, resource = request.method.lower(), request.path
        if route is not None:
            verb = route.verb
            resource = f"{route.rt.plural}/{route.subresource}" if route.subresource else route.rt.plural
        # Counted on arrival: a watch reaches the log only when it ends, but it counts at once.
        self.metrics.counts[(verb, resource)] += 1
        code = 500
        user = ""
        try:
            user = self.authenticate(request).user
            if routing_error is not None:
                raise routing_error
            response: web.StreamResponse
            if route is None:
                response = self._non_resource(request, parts)
            else:
                self.authorizer.check(
                    self.authenticate(request),
                    Attributes(route.verb, route.rt.group, resource, route.namespace, route.name),
                )
                self._inject_fault(route)
                self.store.warnings = []
                response = await self._serve(request, route)
                for message in dict.fromkeys(self.store.warnings):
                    response.headers.add("Warning", _warning(message))
            code = response.status
            return response
        except ApiError as exc:
            code = exc.code
            return _error(exc)
        except (asyncio.CancelledError, ConnectionResetError):
            code = 499  # the client went away (watch streams end this way)
            raise
        except Exception as exc:
            log.exception("fake API server failed on %s %s", request.method, request.path_qs)
            return _error(ApiError(500, f"Internal error occurred: {type(exc).__name__}: {exc}"))
        finally:
            self.metrics.log.append(
                RequestRecord(
                    method=request.method,
                    path=request.path,
                    query=request.query_string,
                    content_type=request.content_type if request.body_exists else "",
                    verb=verb,
                    resource=resource,
                    namespace=route.namespace if route else None,
                    name=route.name if route else None,
                    code=code,
                    duration=time.monotonic() - started,
                    group=route.rt.group if route else "",
                    user=user,
                )
            )

    def _inject_fault(self, route: _Route) -> None:
        for rule in self.faults:
            if rule.matches(route.verb, route.rt, route.namespace, route.name):
                rule.remaining -= 1
                rule.hits += 1
                raise rule.error(route.rt, route.name)

    def _crd_version(self, rt: ResourceType) -> JsonObj | None:
        """The CRD's entry for `rt`'s version (schema, printer columns, subresources)."""
        crd = self.store.find(CRDS, None, rt.crd_name) if rt.crd_name else None
        if crd is None:
            return None
        versions = (crd.get("spec") or {}).get("versions") or ()
        return next((v for v in versions if v.get("name") == rt.version), None)

    def _openapi(self, request: web.Request, parts: list[str]) -> web.Response:
        if parts == ["openapi", "v2"]:
            # Real servers also speak protobuf here; this one only JSON, so say so (406) to a client
            # that accepts nothing else, rather than send what it can't read.
            accept = request.headers.get("Accept", "*/*")
            if not any(m.split(";")[0].strip() in ("application/json", "*/*") for m in accept.split(",")):
                raise ApiError(406, "only application/json is served for /openapi/v2")
            return _json(v2_document(self.registry, self._crd_version))
        if parts == ["openapi", "v3"]:
            return _json(v3_discovery(self.registry, self._crd_version))
        rest = parts[2:]
        group, version = (rest[1], rest[2]) if rest[:1] == ["apis"] and len(rest) == 3 else ("", "")
        if rest[:1] == ["api"] and len(rest) == 2:
            version = rest[1]
        doc = v3_document(self.registry, self._crd_version, group, version) if version else None
        if doc is None:
            raise ApiError(404, "the server could not find the requested resource")
        return _json(doc)

    def _non_resource(self, request: web.Request, parts: list[str]) -> web.Response:
        if parts[:1] == ["openapi"]:
            return self._openapi(request, parts)
        if parts == ["version"]:
            return _json(SERVER_VERSION)
        if len(parts) == 1 and parts[0] in ("healthz", "readyz", "livez"):
            return web.Response(text="ok")
        if parts == ["api"]:
            return _json(self.registry.api_versions(self.server_address))
        if parts == ["apis"]:
            return _json(self.registry.api_group_list())
        if len(parts) == 2 and parts[0] == "apis":
            return _json(self.registry.api_group(parts[1]))
        if len(parts) == 2 and parts[0] == "api":
            return _json(self.registry.resource_list("", parts[1]))
        if len(parts) == 3 and parts[0] == "apis":
            return _json(self.registry.resource_list(parts[1], parts[2]))
        raise ApiError(404, "the server could not find the requested resource")

    def _route(self, method: str, parts: list[str], query: Any) -> _Route | None:
        """Parse a resource URL; None for discovery and other non-resource URLs."""
        if len(parts) >= 3 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        watch_path = rest[0] == "watch"
        if watch_path:
            rest = rest[1:]
        namespace = None
        if (
            len(rest) >= 3
            and rest[0] == "namespaces"
            and not (len(rest) == 3 and self.registry.lookup(group, version, rest[2]) is None)
        ):
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise ApiError(404, "the server could not find the requested resource")
        rt = self.registry.lookup(group, version, rest[0])
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        if (
            rt is None
            or (namespace is not None and not rt.namespaced)
            or (subresource == "status" and not rt.status_subresource)
            or (subresource == "scale" and not rt.scale)
            or subresource not in (None, "status", "scale")
            or (rt.namespaced and name is not None and namespace is None)
        ):
            raise ApiError(404, "the server could not find the requested resource")
        watch = watch_path or _flag(query.get("watch"))
        verb = {
            ("GET", True): "watch" if watch else "get",
            ("GET", False): "watch" if watch else "list",
            ("POST", False): "create",
            ("PUT", True): "update",
            ("PATCH", True): "patch",
            ("DELETE", True): "delete",
            ("DELETE", False): "deletecollection",
        }.get((method, name is not None))
        if verb is None or (verb == "create" and rt.namespaced and namespace is None):
            raise ApiError(405, f"the server does not allow this method on the requested resource ({method})")
        return _Route(verb, rt, namespace, name, subresource)

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return None
        try:
            if request.content_type in ("application/yaml", APPLY_PATCH):
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise errors.bad_request(f"the request body could not be decoded: {exc}") from exc

    async def _serve(self, request: web.Request, route: _Route) -> web.StreamResponse:
        query = request.query
        rt, ns, name = route.rt, route.namespace, route.name
        dry_run = "dryRun" in query
        field_validation = query.get("fieldValidation") or WARN
        if field_validation not in FIELD_VALIDATIONS:
            raise errors.bad_request(
                f'fieldValidation: Unsupported value: "{field_validation}": supported values: '
                + ", ".join(f'"{v}"' for v in FIELD_VALIDATIONS)
            )
        store = self.store
        as_table = table_version(request.headers.get("Accept", ""))
        if route.verb == "watch":
            return await self._watch(request, route)
        if route.subresource == "scale":
            return await self._scale(request, route, dry_run)
        if route.verb == "get":
            assert name is not None
            obj = _view(store.get(rt, ns, name), rt)
            if as_table:
                return _json(self._table(rt, [obj], as_table, query, store.get(rt, ns, name)["metadata"]))
            return _json(obj)
        if route.verb == "list":
            predicate = make_filter(query.get("labelSelector"), query.get("fieldSelector"), _fields(rt))
            limit = int(query["limit"]) if query.get("limit", "").isdigit() else None
            items, rv, token, remaining = store.select(
                rt, ns, predicate, limit=limit, continue_token=query.get("continue")
            )
            if as_table:
                return _json(
                    self._table(
                        rt, [_view(o, rt) for o in items], as_table, query, {"resourceVersion": rv}, token
                    )
                )
            meta: JsonObj = {"resourceVersion": rv}
            if token:
                meta["continue"] = token
                meta["remainingItemCount"] = remaining
            return _json(
                {
                    "kind": rt.list_kind,
                    "apiVersion": rt.api_version,
                    "metadata": meta,
                    "items": [_view(o, rt) for o in items],
                }
            )
        if route.verb == "create":
            obj = store.create(
                rt, ns, await self._body(request), dry_run=dry_run, field_validation=field_validation
            )
            return _json(_view(obj, rt), 201)
        if route.verb == "update":
            assert name is not None
            obj, created = store.update(
                rt,
                ns,
                name,
                await self._body(request),
                subresource=route.subresource,
                dry_run=dry_run,
                field_validation=field_validation,
            )
            return _json(_view(obj, rt), 201 if created else 200)
        if route.verb == "patch":
            assert name is not None
            if request.content_type not in PATCH_TYPES:
                raise ApiError(
                    415,
                    f"the body of the request was in an unknown format - accepted media types "
                    f"include: {', '.join(PATCH_TYPES)}",
                )
            obj, created = store.patch(
                rt,
                ns,
                name,
                request.content_type,
                await self._body(request),
                subresource=route.subresource,
                dry_run=dry_run,
                field_validation=field_validation,
                field_manager=query.get("fieldManager"),
                force=_flag(query.get("force")),
            )
            return _json(_view(obj, rt), 201 if created else 200)
        options = await self._body(request) or {}
        if not isinstance(options, dict):
            raise errors.bad_request("DeleteOptions must be an object")
        propagation = query.get("propagationPolicy") or options.get("propagationPolicy")
        orphan = query.get("orphanDependents", options.get("orphanDependents"))
        if propagation is None and orphan is not None:
            propagation = "Orphan" if orphan in (True, "true") else "Background"
        dry_run = dry_run or bool(options.get("dryRun"))
        if route.verb == "deletecollection":
            predicate = make_filter(query.get("labelSelector"), query.get("fieldSelector"), _fields(rt))
            store.delete_collection(rt, ns, predicate, propagation=propagation, dry_run=dry_run)
            return _json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
        assert name is not None
        obj, removed = store.delete(
            rt, ns, name, propagation=propagation, preconditions=options.get("preconditions"), dry_run=dry_run
        )
        if removed and not rt.returns_deleted_object:
            return _json(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {
                        "name": name,
                        "group": rt.group,
                        "kind": rt.plural,
                        "uid": obj["metadata"]["uid"],
                    },
                }
            )
        return _json(_view(obj, rt))

    def _table(
        self,
        rt: ResourceType,
        objects: list[JsonObj],
        version: str,
        query: Any,
        meta: JsonObj,
        token: str | None = None,
    ) -> JsonObj:
        crd_version = self._crd_version(rt)
        return table(
            objects,
            (crd_version or {}).get("additionalPrinterColumns"),
            version=version,
            resource_version=str(meta.get("resourceVersion", "")),
            include_object=query.get("includeObject"),
            continue_token=token,
        )

    async def _scale(self, request: web.Request, route: _Route, dry_run: bool) -> web.Response:
        """The `/scale` subresource of a CRD that declares one: an autoscaling/v1 Scale read from,
        and written to, the CRD's replicas paths."""
        rt, ns, name = route.rt, route.namespace, route.name
        assert name is not None and rt.scale is not None
        if route.verb == "get":
            return _json(_scale_of(self.store.get(rt, ns, name), rt.scale))
        if route.verb not in ("update", "patch"):
            raise ApiError(
                405, f"the server does not allow this method on the requested resource ({request.method})"
            )
        current = _scale_of(self.store.get(rt, ns, name), rt.scale)
        body = await self._body(request)
        if route.verb == "patch":
            if request.content_type not in (MERGE_PATCH, JSON_PATCH):
                raise ApiError(
                    415, f"the body of the request was in an unknown format: {request.content_type}"
                )
            wanted = (
                json_patch(current, body)
                if request.content_type == JSON_PATCH
                else merge_patch(current, body)
            )
        else:
            wanted = body
        replicas = ((wanted or {}).get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise errors.invalid(
                "Scale", "autoscaling", name, [("spec.replicas", f"Invalid value: {replicas}: must be >= 0")]
            )
        patch = _nest(rt.scale[0], replicas)
        obj, _ = self.store.patch(rt, ns, name, MERGE_PATCH, patch, dry_run=dry_run)
        return _json(_scale_of(obj, rt.scale))

    async def _watch(self, request: web.Request, route: _Route) -> web.StreamResponse:
        query = request.query
        rt = route.rt
        predicate = make_filter(query.get("labelSelector"), query.get("fieldSelector"), _fields(rt))
        if route.name is not None:  # the legacy /watch/.../name form
            inner, name = predicate, route.name
            predicate = lambda obj: obj["metadata"]["name"] == name and inner(obj)  # noqa: E731
        bookmarks = _flag(query.get("allowWatchBookmarks"))
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        queue: asyncio.Queue[tuple[str, JsonObj] | None] = asyncio.Queue()
        as_table = table_version(request.headers.get("Accept", ""))
        headed = False

        def shown(obj: JsonObj) -> JsonObj:
            """The event's object: as the version shows it, or (`kubectl get -w`) a one-row Table,
            its column definitions in the first event only, as the real server sends them."""
            nonlocal headed
            obj = _view(obj, rt)
            if not as_table:
                return obj
            meta = {"resourceVersion": obj["metadata"].get("resourceVersion", "")}
            converted = self._table(rt, [obj], as_table, query, meta)
            if headed:
                converted["columnDefinitions"] = []
            headed = True
            return converted

        expired: ApiError | None = None
        watcher = None
        try:
            watcher = self.store.open_watch(
                rt,
                route.namespace,
                predicate,
                query.get("resourceVersion"),
                _flag(query.get("sendInitialEvents")),
                lambda kind, obj: queue.put_nowait((kind, obj)),
            )
        except ApiError as exc:
            if exc.code != 410:
                raise
            expired = exc  # the real server answers 200 and reports it as the stream's first event
        response = web.StreamResponse(status=200)
        response.content_type = "application/json"
        response.enable_chunked_encoding()
        await response.prepare(request)
        if expired is not None:
            await response.write(self._event("ERROR", expired.status()))
            await response.write_eof()
            return response
        self._streams.add(queue)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        try:
            while True:
                waits = [
                    w
                    for w in (
                        self.bookmark_interval if bookmarks else None,
                        deadline - loop.time() if deadline is not None else None,
                    )
                    if w is not None
                ]
                wait = min(waits) if waits else None
                if wait is not None and wait <= 0:
                    break
                try:
                    async with asyncio.timeout(wait):
                        item = await queue.get()
                except TimeoutError:
                    if deadline is not None and loop.time() >= deadline:
                        break
                    # Nothing is pending in the queue, so every event up to the current revision has
                    # been written: the bookmark may promise it.
                    await response.write(self._bookmark(rt, {"resourceVersion": str(self.store.rv)}))
                    continue
                chunk = bytearray()
                while item is not _STOP:
                    assert item is not None
                    kind, obj = item
                    if kind != "BOOKMARK":
                        chunk += self._event(kind, shown(obj))
                    elif bookmarks:
                        chunk += self._bookmark(rt, obj["metadata"])
                    if queue.empty():
                        break
                    item = queue.get_nowait()
                if chunk:
                    await response.write(bytes(chunk))
                if item is _STOP:
                    break
        finally:
            self._streams.discard(queue)
            if watcher is not None:
                self.store.close_watch(watcher)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    @staticmethod
    def _event(kind: str, obj: JsonObj) -> bytes:
        return _dumps({"type": kind, "object": obj}) + b"\n"

    @staticmethod
    def _bookmark(rt: ResourceType, metadata: JsonObj) -> bytes:
        return (
            _dumps(
                {
                    "type": "BOOKMARK",
                    "object": {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": metadata},
                }
            )
            + b"\n"
        )


def _fields(rt: ResourceType) -> frozenset[str]:
    return rt.extra_field_selectors | {"metadata.name", "metadata.namespace"}


def _nest(dotted: str, value: Any) -> JsonObj:
    """`.spec.replicas`, 3 -> {"spec": {"replicas": 3}}."""
    result: Any = value
    for part in reversed([p for p in dotted.split(".") if p]):
        result = {part: result}
    return result


def _scale_of(obj: JsonObj, paths: tuple[str, str, str | None]) -> JsonObj:
    spec_path, status_path, selector_path = paths

    def read(dotted: str | None) -> Any:
        value: Any = obj
        for part in [p for p in (dotted or "").split(".") if p]:
            value = value.get(part) if isinstance(value, dict) else None
        return value

    meta = obj["metadata"]
    status: JsonObj = {"replicas": read(status_path) or 0}
    if selector_path and read(selector_path):
        status["selector"] = read(selector_path)
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in meta
        },
        "spec": {"replicas": read(spec_path) or 0},
        "status": status,
    }
