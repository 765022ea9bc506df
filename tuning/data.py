"""Tuning inputs: fetch the data a Workspace names, load it, and shape it for TRL.

Sources (Kaito's `tuning.input`): `urls` (http/https; parquet, jsonl/json or csv, told apart by the
file extension, then the Content-Type, then the first bytes), an OCI `image` holding the files under
`/data` (pulled with `kairay.oci.images.pull_data`), or a local path (a `volumeSource` hostPath, or the
directory a cluster volume is mounted at).

Formats: conversational `{"messages": [{"role", "content"}, ...]}` (dolly-15k-oai-style), instruction
`{"prompt", "completion"}`, or plain `{"text"}`; Kaito's `DatasetConfig` column mapping
(`messages_column`, `context_column` + `response_column`) picks other column names.

URLs are fetched by this process, inside the cluster, so a Workspace must not be able to make it read
the pod's own network: every address a host resolves to must be globally routable (no loopback,
private, link-local, shared or reserved ranges, nor the cloud metadata endpoints), every redirect hop
is checked the same way, and the connection goes to the address that was checked (no second DNS
lookup for a rebinding answer to slip into). `allow_private_urls=True` or `KAIRAY_ALLOW_PRIVATE_URLS=1`
lifts this for trusted setups and tests.

One module: every data source (URLs with their address guard, images, volumes) ends in the same
loading and shaping for TRL.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import socket
import ssl
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import urllib3

from kairay.api.errors import KairayError
from kairay.oci.images import pull_data
from kairay.oci.registry import DockerConfigArg, RegistryError
from tuning.config import DatasetConfig

logger = logging.getLogger(__name__)

FileFormat = Literal["parquet", "jsonl", "json", "csv"]
DataFormat = Literal["messages", "prompt_completion", "text"]

ALLOW_PRIVATE_ENV = "KAIRAY_ALLOW_PRIVATE_URLS"
MAX_REDIRECTS = 5
MAX_DOWNLOAD_BYTES = 20 * 1024**3  # a dataset larger than this is a mistake, not a tuning input
ROLES = frozenset({"system", "user", "assistant", "tool"})

_EXTENSIONS: dict[str, FileFormat] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
}
_CONTENT_TYPES: tuple[tuple[str, FileFormat], ...] = (
    ("parquet", "parquet"),
    ("ndjson", "jsonl"),
    ("jsonl", "jsonl"),
    ("json-seq", "jsonl"),
    ("jsonlines", "jsonl"),
    ("json", "json"),
    ("csv", "csv"),
)
# Metadata endpoints that are not already outside the global ranges: Azure's wire server is a public
# address, only reachable from inside Azure.
_METADATA_ADDRESSES = frozenset({ipaddress.ip_address("168.63.129.16")})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class DatasetError(KairayError):
    """The tuning data cannot be used; the message names the URL, image or file at fault."""

    reason = "InvalidTuningData"
    http_status = HTTPStatus.BAD_REQUEST


class URLRefusedError(DatasetError):
    """A URL points at an address a tuning job must not reach (or uses an unsupported scheme)."""


@dataclass(frozen=True)
class DataSource:
    """Where the data comes from: exactly one of `urls`, `image`, `path`."""

    urls: tuple[str, ...] = ()
    image: str | None = None
    path: Path | None = None
    # Docker config file(s) / mounted dockerconfigjson Secrets for pulling `image`.
    image_pull_docker_config: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        given = [bool(self.urls), self.image is not None, self.path is not None]
        if sum(given) != 1:
            raise DatasetError("tuning input needs exactly one of urls, image or a path (volume)")

    def describe(self) -> str:
        if self.urls:
            return ", ".join(self.urls)
        return self.image or str(self.path)


@dataclass(frozen=True)
class DataFile:
    path: Path
    format: FileFormat
    source: str  # the URL, image/path or file a user would recognise in an error message


@dataclass(frozen=True)
class TuningData:
    """The checked examples in one of three shapes, as Arrow tables (cheap to ship to Ray workers)."""

    format: DataFormat
    train: pa.Table
    eval: pa.Table | None
    sources: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------------
# URL safety and download


def allow_private_default() -> bool:
    return os.environ.get(ALLOW_PRIVATE_ENV, "").strip().lower() in ("1", "true", "yes")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def forbidden_reason(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a tuning job must not connect to `address`, or None when it is a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            reason = forbidden_reason(inner)
            return f"{reason} (embeds IPv4 {inner})" if reason else None
    if address in _METADATA_ADDRESSES:
        return "a cloud metadata endpoint"
    checks = (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local (cloud metadata)", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("not globally routable", not address.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def _resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DatasetError(f"cannot resolve {host}: {exc.strerror}") from None
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def check_url(
    url: str, *, allow_private: bool | None = None
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Validate one URL (scheme, host, every resolved address); return the addresses it may use."""
    allow = allow_private_default() if allow_private is None else allow_private
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise URLRefusedError(f"{url}: only http and https URLs are supported")
    host = parts.hostname
    if not host:
        raise URLRefusedError(f"{url}: no host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = _resolve(host, port)
    if not allow:
        for address in addresses:
            reason = forbidden_reason(address)
            if reason:
                raise URLRefusedError(
                    f"{url}: refusing to fetch from {host} ({address} is {reason}); set "
                    f"allow_private_urls=True or {ALLOW_PRIVATE_ENV}=1 to allow it"
                )
    return addresses


def _pool(scheme: str, host: str, address: str, port: int) -> urllib3.HTTPConnectionPool:
    timeout = urllib3.Timeout(connect=15.0, read=120.0)
    if scheme == "https":
        # Connect to the checked address, but verify the certificate (and send SNI) for the host name.
        return urllib3.HTTPSConnectionPool(
            address,
            port,
            timeout=timeout,
            retries=False,
            server_hostname=host,
            assert_hostname=host,
            ssl_context=ssl.create_default_context(),
        )
    return urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False)


def _format_from_name(name: str) -> FileFormat | None:
    lowered = name.lower()
    return next((fmt for ext, fmt in _EXTENSIONS.items() if lowered.endswith(ext)), None)


def _format_from_content_type(content_type: str) -> FileFormat | None:
    lowered = content_type.lower().split(";", 1)[0]
    return next((fmt for key, fmt in _CONTENT_TYPES if key in lowered), None)


def _format_from_bytes(path: Path) -> FileFormat | None:
    with path.open("rb") as handle:
        head = handle.read(4096)
    if head.startswith(b"PAR1"):
        return "parquet"
    stripped = head.lstrip()
    if stripped.startswith(b"["):
        return "json"
    if stripped.startswith(b"{"):
        return "jsonl"
    return None


def download_url(
    url: str,
    target_dir: Path,
    *,
    index: int = 0,
    allow_private: bool | None = None,
    extension: FileFormat | None = None,
) -> DataFile:
    """Download one dataset URL into `target_dir` (following and checking redirects)."""
    target_dir.mkdir(parents=True, exist_ok=True)
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        addresses = check_url(current, allow_private=allow_private)
        parts = urllib.parse.urlsplit(current)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        host_header = parts.netloc.rsplit("@", 1)[-1]
        response = None
        last_error: Exception | None = None
        for address in addresses:
            pool = _pool(parts.scheme, host, str(address), port)
            try:
                response = pool.urlopen(
                    "GET",
                    target,
                    headers={"Host": host_header, "User-Agent": "kairay-tuning", "Accept": "*/*"},
                    redirect=False,
                    preload_content=False,
                    assert_same_host=False,
                )
                break
            except urllib3.exceptions.SSLError as exc:
                raise DatasetError(f"{url}: TLS verification of {host} failed: {exc}") from None
            except urllib3.exceptions.HTTPError as exc:
                last_error = exc
        if response is None:
            raise DatasetError(f"{url}: cannot connect to {host}: {type(last_error).__name__}")
        if response.status in (301, 302, 303, 307, 308):
            location = response.headers.get("Location")
            response.release_conn()
            if not location:
                raise DatasetError(f"{url}: redirect without a Location header")
            current = urllib.parse.urljoin(current, location)
            continue
        try:
            if response.status != 200:
                raise DatasetError(f"{url}: HTTP {response.status} {response.reason or ''}".rstrip())
            name = Path(urllib.parse.unquote(parts.path)).name or "data"
            path = target_dir / f"{index:03d}-{name}"
            size = 0
            with path.open("wb") as handle:
                for chunk in response.stream(1 << 20):
                    size += len(chunk)
                    if size > MAX_DOWNLOAD_BYTES:
                        raise DatasetError(f"{url}: larger than {MAX_DOWNLOAD_BYTES // 1024**3} GiB")
                    handle.write(chunk)
        finally:
            response.release_conn()
        fmt = (
            extension
            or _format_from_name(parts.path)
            or _format_from_content_type(response.headers.get("Content-Type", ""))
            or _format_from_bytes(path)
        )
        if fmt is None:
            raise DatasetError(
                f"{url}: cannot tell the file format (Content-Type "
                f"{response.headers.get('Content-Type') or 'missing'}); use a .parquet, .jsonl, .json or "
                ".csv URL or set DatasetConfig.dataset_extension"
            )
        logger.info("downloaded %s (%d bytes, %s)", url, size, fmt)
        return DataFile(path=path, format=fmt, source=url)
    raise DatasetError(f"{url}: more than {MAX_REDIRECTS} redirects")


# --------------------------------------------------------------------------------------------------
# Locating files in an image or a volume


def find_data_files(root: Path, config: DatasetConfig, *, source: str) -> list[DataFile]:
    """The dataset file(s) under `root`: `DatasetConfig.dataset_path`, or every supported file."""
    if config.dataset_path:
        relative = Path(config.dataset_path.strip("/"))
        if ".." in relative.parts:
            raise DatasetError(
                f"DatasetConfig.dataset_path {config.dataset_path!r} must stay inside the data"
            )
        path = root / relative
        if not path.exists():
            raise DatasetError(f"{source}: DatasetConfig.dataset_path {config.dataset_path!r} not found")
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    elif root.is_file():
        candidates = [root]
    else:
        candidates = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    files = []
    for path in candidates:
        fmt = config.dataset_extension or _format_from_name(path.name)
        if fmt is not None:
            files.append(
                DataFile(
                    path=path,
                    format=fmt,
                    source=f"{source}:{path.relative_to(root)}" if path != root else source,
                )
            )
    if not files:
        raise DatasetError(f"{source}: no .parquet, .jsonl, .json or .csv file found")
    return files


def fetch_inputs(
    source: DataSource,
    workdir: Path,
    config: DatasetConfig,
    *,
    allow_private_urls: bool | None = None,
    insecure_registry: bool | None = None,
) -> list[DataFile]:
    """Bring the input files onto this machine (download / pull) and list them."""
    if source.urls:
        return [
            download_url(
                url,
                workdir / "downloads",
                index=i,
                allow_private=allow_private_urls,
                extension=config.dataset_extension,
            )
            for i, url in enumerate(source.urls)
        ]
    if source.image is not None:
        docker_config: DockerConfigArg = list(source.image_pull_docker_config) or None
        try:
            root = pull_data(
                source.image, workdir / "input-image", docker_config=docker_config, insecure=insecure_registry
            )
        except RegistryError as exc:
            raise DatasetError(f"input image: {exc}") from None
        return find_data_files(root, config, source=source.image)
    assert source.path is not None
    if not source.path.exists():
        raise DatasetError(f"input path {source.path} does not exist")
    return find_data_files(source.path, config, source=str(source.path))


# --------------------------------------------------------------------------------------------------
# Reading and shaping


def _read_json_rows(file: DataFile) -> list[dict[str, Any]]:
    try:
        text = file.path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DatasetError(f"{file.source}: not UTF-8 text") from None
    if file.format == "json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{file.source}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        if not isinstance(rows, list):
            raise DatasetError(f"{file.source}: expected a JSON array of objects")
        numbered: Iterable[tuple[int, Any]] = enumerate(rows, 1)
        unit = "item"
    else:
        numbered = (
            (number, _parse_line(line, number, file))
            for number, line in enumerate(text.splitlines(), 1)
            if line.strip()
        )
        unit = "line"
    result = []
    for number, row in numbered:
        if not isinstance(row, dict):
            raise DatasetError(f"{file.source}: {unit} {number} is not a JSON object")
        result.append(row)
    return result


def _parse_line(line: str, number: int, file: DataFile) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{file.source}: line {number} is not valid JSON: {exc.msg}") from None


def read_table(file: DataFile) -> pa.Table:
    """Read one file into an Arrow table, with errors that name the file."""
    try:
        if file.format == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(file.path)
        if file.format == "csv":
            import pyarrow.csv as pcsv

            return pcsv.read_csv(file.path)
        rows = _read_json_rows(file)
        return pa.Table.from_pylist(rows) if rows else pa.table({})
    except DatasetError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{file.source}: cannot read it as {file.format}: {exc}") from None


def _check_messages(value: Any, row: int, source: str, column: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{source}: row {row}: {column!r} must be a non-empty list of messages")
    messages = []
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise DatasetError(f"{source}: row {row}: each message needs a string 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise DatasetError(f"{source}: row {row}: unknown role {role!r} (use {', '.join(sorted(ROLES))})")
        messages.append({"role": str(role), "content": message["content"]})
    if not any(m["role"] == "assistant" for m in messages):
        raise DatasetError(f"{source}: row {row}: no assistant message to learn from")
    return messages


def _check_string(value: Any, row: int, source: str, column: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{source}: row {row}: {column!r} must be a non-empty string")
    return value


def shape_table(table: pa.Table, config: DatasetConfig, *, source: str) -> tuple[DataFormat, pa.Table]:
    """Pick the format from the columns (Kaito's DatasetConfig mapping first) and check every row."""
    columns = table.column_names
    if table.num_rows == 0:
        raise DatasetError(f"{source}: the dataset is empty")

    def need(*names: str) -> None:
        missing = [n for n in names if n not in columns]
        if missing:
            raise DatasetError(
                f"{source}: missing column(s) {', '.join(map(repr, missing))}; "
                f"found {', '.join(columns) or 'none'}"
            )

    messages_column = config.messages_column or ("messages" if "messages" in columns else None)
    if config.messages_column or (messages_column and not config.context_column):
        assert messages_column is not None
        need(messages_column)
        rows = table.column(messages_column).to_pylist()
        shaped = [_check_messages(v, i, source, messages_column) for i, v in enumerate(rows, 1)]
        return "messages", pa.table({"messages": shaped})
    prompt_column = config.context_column or ("prompt" if "prompt" in columns else None)
    completion_column = config.response_column if config.context_column else "completion"
    if config.context_column or (prompt_column and "completion" in columns):
        assert prompt_column is not None
        need(prompt_column, completion_column)
        prompts = table.column(prompt_column).to_pylist()
        completions = table.column(completion_column).to_pylist()
        return "prompt_completion", pa.table(
            {
                "prompt": [_check_string(v, i, source, prompt_column) for i, v in enumerate(prompts, 1)],
                "completion": [
                    _check_string(v, i, source, completion_column) for i, v in enumerate(completions, 1)
                ],
            }
        )
    if config.response_column in columns:
        texts = table.column(config.response_column).to_pylist()
        return "text", pa.table(
            {"text": [_check_string(v, i, source, config.response_column) for i, v in enumerate(texts, 1)]}
        )
    raise DatasetError(
        f"{source}: missing columns: expected 'messages' (conversational), 'prompt' + 'completion' "
        f"(instruction) or {config.response_column!r} (text), or a DatasetConfig column mapping; "
        f"found {', '.join(columns) or 'none'}"
    )


def load_dataset_files(files: Sequence[DataFile], config: DatasetConfig) -> TuningData:
    """Read, check, shape, shuffle and split the files' examples."""
    shaped = [shape_table(read_table(file), config, source=file.source) for file in files]
    formats = {fmt for fmt, _ in shaped}
    if len(formats) > 1:
        described = ", ".join(f"{f.source} ({fmt})" for f, (fmt, _) in zip(files, shaped, strict=True))
        raise DatasetError(f"the input files mix formats: {described}")
    table = pa.concat_tables([t for _, t in shaped], promote_options="default")
    if config.shuffle_dataset:
        # The permutation `datasets.Dataset.shuffle(seed=...)` would draw.
        table = table.take(np.random.default_rng(config.shuffle_seed).permutation(table.num_rows))
    eval_table = None
    if config.train_test_split < 1:
        n_eval = math.ceil(table.num_rows * (1 - config.train_test_split))
        if table.num_rows - n_eval < 1:
            raise DatasetError(
                f"{files[0].source}: {table.num_rows} example(s) cannot be split "
                f"(DatasetConfig.train_test_split {config.train_test_split})"
            )
        table, eval_table = table.slice(0, table.num_rows - n_eval), table.slice(table.num_rows - n_eval)
    return TuningData(
        format=shaped[0][0], train=table, eval=eval_table, sources=tuple(f.source for f in files)
    )


def prepare_data(
    source: DataSource,
    workdir: Path,
    config: DatasetConfig,
    *,
    allow_private_urls: bool | None = None,
    insecure_registry: bool | None = None,
) -> TuningData:
    """Fetch and load the tuning data of one Workspace."""
    files = fetch_inputs(
        source, workdir, config, allow_private_urls=allow_private_urls, insecure_registry=insecure_registry
    )
    data = load_dataset_files(files, config)
    logger.info(
        "tuning data: %d train / %d eval examples (%s) from %s",
        data.train.num_rows,
        data.eval.num_rows if data.eval is not None else 0,
        data.format,
        source.describe(),
    )
    return data
