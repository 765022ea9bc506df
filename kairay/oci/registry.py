"""The registry side of OCI images: credentials from docker config files, and one registry client.

Credentials come only from a docker config file (`~/.docker/config.json`, or the `.dockerconfigjson` of
a mounted `kubernetes.io/dockerconfigjson` Secret); they are never logged and never put in an error
message. oras-py's registry client does the HTTP work; its request method is replaced because the
stock one retries every failure with growing sleeps (minutes before a wrong password or a dead registry
is reported) and cannot tell "no credentials" from "wrong credentials".
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import oras.auth
import oras.container
import oras.provider
import requests
from pydantic import BaseModel, ConfigDict, ValidationError

from kairay.api.errors import KairayError

DockerConfigArg = str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None

_TIMEOUT = (10.0, 300.0)  # (connect, read) seconds
_NO_DOCKER_CONFIG = "no docker config"


class RegistryError(KairayError):
    """A registry operation failed; the message names the image and never holds credentials."""

    reason = "RegistryFailed"
    http_status = HTTPStatus.BAD_GATEWAY


class RegistryAuthError(RegistryError):
    """No credentials where the registry wants some, or the registry rejected them (401/403)."""

    reason = "RegistryAuthFailed"


class ImageNotFoundError(RegistryError):
    """The image (manifest) or one of its blobs does not exist (404)."""

    reason = "ImageNotFound"
    http_status = HTTPStatus.NOT_FOUND


class RegistryUnreachableError(RegistryError):
    """The registry did not answer (DNS, connection refused, TLS, timeout)."""

    reason = "RegistryUnreachable"
    http_status = HTTPStatus.SERVICE_UNAVAILABLE


@dataclass(frozen=True)
class _Credentials:
    username: str
    password: str = ""

    def __repr__(self) -> str:  # keeps secrets out of tracebacks and debug logs
        return "_Credentials(<redacted>)"


# --------------------------------------------------------------------------------------------------
# Docker config (credentials)


class _DockerAuth(BaseModel):
    model_config = ConfigDict(extra="ignore")
    auth: str | None = None
    username: str | None = None
    password: str | None = None


class _DockerConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")
    auths: dict[str, _DockerAuth] = {}


def default_docker_config() -> Path | None:
    """Docker's own config (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`), if present."""
    base = os.environ.get("DOCKER_CONFIG")
    path = Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"
    return path if path.is_file() else None


def _docker_config_files(docker_config: DockerConfigArg) -> list[Path]:
    if docker_config is None:
        return []
    items = [docker_config] if isinstance(docker_config, str | os.PathLike) else list(docker_config)
    files = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            # A mounted dockerconfigjson Secret is a directory with a `.dockerconfigjson` file.
            candidates = [path / ".dockerconfigjson", path / "config.json"]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise RegistryAuthError(
                    f"docker config directory {path} has no .dockerconfigjson or config.json"
                )
            path = found
        files.append(path)
    return files


def _normalize_host(key: str) -> str:
    host = key.split("://", 1)[-1].split("/", 1)[0].lower()
    return "docker.io" if host in ("index.docker.io", "registry-1.docker.io") else host


def _credentials_for(host: str, docker_config: DockerConfigArg) -> _Credentials | None:
    wanted = _normalize_host(host)
    for path in _docker_config_files(docker_config):
        try:
            config = _DockerConfig.model_validate_json(path.read_bytes())
        except OSError as exc:
            raise RegistryAuthError(f"cannot read docker config {path}: {exc.strerror or exc}") from None
        except ValidationError:
            raise RegistryAuthError(
                f"docker config {path} is not a valid docker config JSON (auths)"
            ) from None
        for key, entry in config.auths.items():
            if _normalize_host(key) != wanted:
                continue
            if entry.auth:
                try:
                    decoded = base64.b64decode(entry.auth, validate=True).decode()
                except (binascii.Error, UnicodeDecodeError):
                    raise RegistryAuthError(
                        f"docker config {path}: auths[{key!r}].auth is not base64 of user:password"
                    ) from None
                username, _, password = decoded.partition(":")
                return _Credentials(username, password)
            if entry.username:
                return _Credentials(entry.username, entry.password or "")
    return None


# --------------------------------------------------------------------------------------------------
# Registry client


def _is_loopback_host(host: str) -> bool:
    name = host.rsplit(":", 1)[0].strip("[]") if host.count(":") <= 1 or host.startswith("[") else host
    if name == "localhost":
        return True
    try:
        return ip_address(name).is_loopback
    except ValueError:
        return False


class RegistryClient(oras.provider.Registry):
    """oras-py's registry client with one request method that fails fast and clearly."""

    def __init__(self, host: str, *, insecure: bool, credentials: _Credentials | None, source: str) -> None:
        super().__init__(hostname=host, insecure=insecure, auth_backend="basic")
        self._host = host
        self._credentials = credentials
        self._source = source
        self.session.trust_env = False  # no proxies or .netrc credentials from the environment
        self._authenticated = False
        self._probe()

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            return self.session.request(method, url, timeout=_TIMEOUT, verify=self._tls_verify, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise RegistryUnreachableError(
                f"TLS to registry {self._host} failed ({type(exc).__name__}); for a plain-HTTP registry "
                "use insecure=True"
            ) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise RegistryUnreachableError(
                f"registry {self._host} is unreachable ({self.prefix}): {type(exc).__name__}"
            ) from None

    def _missing_credentials(self) -> str:
        if self._source == _NO_DOCKER_CONFIG:
            return f"registry {self._host} requires authentication and no docker config was given"
        return f"registry {self._host} requires authentication and {self._source} has no credentials for it"

    def _probe(self) -> None:
        """`GET /v2/` picks the auth backend from the challenge (Basic for htpasswd, Bearer for tokens)."""
        response = self._send("GET", f"{self.prefix}://{self._host}/v2/")
        if response.status_code == 200:
            return
        if response.status_code != 401:
            raise RegistryError(f"registry {self._host} answered /v2/ with HTTP {response.status_code}")
        if self._credentials is None:
            raise RegistryAuthError(self._missing_credentials())
        challenge = response.headers.get("Www-Authenticate", "")
        backend = "token" if challenge.lower().startswith("bearer") else "basic"
        self.auth = oras.auth.get_auth_backend(backend, self.session, self.prefix == "http", self._tls_verify)
        self.auth.set_basic_auth(self._credentials.username, self._credentials.password)

    def do_request(
        self,
        url: str,
        method: str = "GET",
        data: dict[str, Any] | bytes | None = None,
        headers: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        headers = dict(headers or {})
        if self._authenticated:
            headers.update(self.auth.get_auth_header())
        response = self._send(method, url, data=data, json=json, headers=headers, stream=stream)
        if response.status_code != 401:
            return response
        if self._credentials is None:
            raise RegistryAuthError(self._missing_credentials())
        # refresh=True: a bearer token is scoped to one repository and action (pull, push), so a 401
        # with a token in hand asks for a new one rather than proving the credentials wrong.
        headers, changed = self.auth.authenticate_request(response, headers, refresh=True)
        if not changed:
            raise RegistryAuthError(f"registry {self._host} rejected the credentials from {self._source}")
        response = self._send(method, url, data=data, json=json, headers=headers, stream=stream)
        if response.status_code == 401:
            raise RegistryAuthError(
                f"registry {self._host} rejected the credentials from {self._source} (401)"
            )
        self._authenticated = True
        return response


@contextmanager
def open_registry(
    ref: str, docker_config: DockerConfigArg, insecure: bool | None
) -> Iterator[tuple[RegistryClient, oras.container.Container]]:
    try:
        container = oras.container.Container(ref)
    except ValueError:
        raise RegistryError(f"{ref!r} is not an image reference (registry/repository:tag)") from None
    if "/" not in ref.split("@", 1)[0]:
        raise RegistryError(f"{ref!r} names no registry; use e.g. myregistry.azurecr.io/adapters/name:tag")
    host = container.registry
    files = _docker_config_files(docker_config)
    source = "docker config " + ", ".join(str(f) for f in files) if files else _NO_DOCKER_CONFIG
    credentials = _credentials_for(host, files)
    use_http = _is_loopback_host(host) if insecure is None else insecure
    client = RegistryClient(host, insecure=use_http, credentials=credentials, source=source)
    try:
        yield client, container
    finally:
        client.session.close()


def check_response(
    response: requests.Response, what: str, ref: str, *, ok: tuple[int, ...] = (200, 201, 202)
) -> None:
    if response.status_code in ok:
        return
    codes = _error_codes(response)
    if response.status_code == 404:
        raise ImageNotFoundError(f"{what} of {ref} not found ({codes or 'HTTP 404'})")
    if response.status_code == 403:
        raise RegistryAuthError(f"{what} of {ref}: access denied (403{', ' + codes if codes else ''})")
    raise RegistryError(f"{what} of {ref} failed: HTTP {response.status_code}{', ' + codes if codes else ''}")


def _error_codes(response: requests.Response) -> str:
    try:
        errors = response.json().get("errors") or []
    except ValueError:
        return ""
    return "; ".join(
        f"{e.get('code', '')} {e.get('message', '')}".strip() for e in errors if isinstance(e, dict)
    )
