"""Tuning data: URLs (with the private-address guard), images, local paths, formats, bad datasets."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kairay.oci.images import push_data
from tests.harness.registry import RegistryServer
from tests.tuning.conftest import FileServer, chat_rows, write_jsonl
from tuning.config import DatasetConfig
from tuning.data import (
    ALLOW_PRIVATE_ENV,
    DatasetError,
    DataSource,
    URLRefusedError,
    check_url,
    forbidden_reason,
    prepare_data,
)

ALL = DatasetConfig(train_test_split=1, shuffle_dataset=False)


@pytest.fixture(autouse=True)
def _no_env_allow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_PRIVATE_ENV, raising=False)


def _instruction_parquet(path: Path, count: int) -> Path:
    rows = [{"prompt": f"Say {i}", "completion": f"{i}!", "extra": i} for i in range(count)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_jsonl_and_parquet_over_loopback_http_with_the_allow_flag(
    file_server: FileServer, tmp_path: Path
) -> None:
    write_jsonl(file_server.root / "chat.jsonl", chat_rows(6))
    _instruction_parquet(file_server.root / "instructions.parquet", 4)

    chat = prepare_data(
        DataSource(urls=(file_server.url("chat.jsonl"),)), tmp_path, ALL, allow_private_urls=True
    )
    assert chat.format == "messages" and chat.train.num_rows == 6 and chat.eval is None
    first = chat.train.to_pylist()[0]["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"]

    instructions = prepare_data(
        DataSource(urls=(file_server.url("instructions.parquet"),)),
        tmp_path,
        DatasetConfig(train_test_split=0.75),
        allow_private_urls=True,
    )
    assert instructions.format == "prompt_completion"
    assert instructions.train.column_names == ["prompt", "completion"]
    assert (instructions.train.num_rows, instructions.eval is not None and instructions.eval.num_rows) == (
        3,
        1,
    )


def test_several_urls_are_concatenated(file_server: FileServer, tmp_path: Path) -> None:
    write_jsonl(file_server.root / "a.jsonl", chat_rows(3))
    write_jsonl(file_server.root / "b.jsonl", chat_rows(2))
    source = DataSource(urls=(file_server.url("a.jsonl"), file_server.url("b.jsonl")))
    assert prepare_data(source, tmp_path, ALL, allow_private_urls=True).train.num_rows == 5


def test_format_from_content_type_and_from_bytes(file_server: FileServer, tmp_path: Path) -> None:
    write_jsonl(file_server.root / "chat", chat_rows(2))
    file_server.content_types["/chat"] = "application/x-ndjson"
    _instruction_parquet(file_server.root / "blob", 2)
    (file_server.root / "table").write_text("prompt,completion\nhi,there\n")
    file_server.content_types["/table"] = "text/csv; charset=utf-8"

    for name, expected in (
        ("chat", "messages"),
        ("blob", "prompt_completion"),
        ("table", "prompt_completion"),
    ):
        loaded = prepare_data(
            DataSource(urls=(file_server.url(name),)), tmp_path, ALL, allow_private_urls=True
        )
        assert loaded.format == expected, name


def test_loopback_is_refused_without_the_flag(file_server: FileServer, tmp_path: Path) -> None:
    write_jsonl(file_server.root / "chat.jsonl", chat_rows(2))
    url = file_server.url("chat.jsonl")
    with pytest.raises(URLRefusedError, match="loopback") as caught:
        prepare_data(DataSource(urls=(url,)), tmp_path, ALL)
    assert url in str(caught.value) and ALLOW_PRIVATE_ENV in str(caught.value)
    with pytest.raises(URLRefusedError, match="loopback"):
        check_url(f"http://localhost:{file_server.port}/chat.jsonl")


def test_env_variable_allows_private_urls(
    file_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_jsonl(file_server.root / "chat.jsonl", chat_rows(2))
    monkeypatch.setenv(ALLOW_PRIVATE_ENV, "1")
    assert prepare_data(DataSource(urls=(file_server.url("chat.jsonl"),)), tmp_path, ALL).train.num_rows == 2
    # An explicit False wins over the environment.
    with pytest.raises(URLRefusedError):
        prepare_data(
            DataSource(urls=(file_server.url("chat.jsonl"),)), tmp_path, ALL, allow_private_urls=False
        )


def test_every_redirect_hop_is_checked(file_server: FileServer, tmp_path: Path) -> None:
    """Each hop goes through `check_url` itself: the loopback server is allowed by the product's flag,
    and what the flag does not allow (other schemes, hosts that do not resolve) is refused at the hop."""
    write_jsonl(file_server.root / "chat.jsonl", chat_rows(2))
    file_server.redirects["/ok"] = "/chat.jsonl"
    file_server.redirects["/file"] = "file:///etc/passwd"
    file_server.redirects["/gopher"] = "gopher://127.0.0.1:70/"
    file_server.redirects["/nowhere"] = "http://no-such-host.invalid/data.jsonl"

    def fetch(path: str) -> int:
        source = DataSource(urls=(file_server.url(path),))
        return prepare_data(source, tmp_path, ALL, allow_private_urls=True).train.num_rows

    assert fetch("ok") == 2
    with pytest.raises(URLRefusedError, match=r"file:///etc/passwd: only http and https"):
        fetch("file")
    with pytest.raises(URLRefusedError, match=r"gopher://127\.0\.0\.1:70/: only http and https"):
        fetch("gopher")
    with pytest.raises(DatasetError, match=r"cannot resolve no-such-host\.invalid"):
        fetch("nowhere")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", r"169\.254\.169\.254 is link-local"),
        ("http://168.63.129.16/machine", r"168\.63\.129\.16 is a cloud metadata endpoint"),
        ("http://10.1.2.3/data.jsonl", r"10\.1\.2\.3 is private"),
        (
            "http://[::ffff:a9fe:a9fe]/x",
            r"is link-local \(cloud metadata\) \(embeds IPv4 169\.254\.169\.254\)",
        ),
        ("https://localhost/x", "is loopback"),
    ],
)
def test_check_url_refuses_the_addresses_a_redirect_could_lead_to(url: str, reason: str) -> None:
    with pytest.raises(URLRefusedError, match=reason):
        check_url(url)
    assert check_url(url, allow_private=True)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.5", "private"),
        ("192.168.1.1", "private"),
        ("172.16.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "private"),
        ("168.63.129.16", "metadata"),
        ("100.100.100.200", "not globally routable"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("64:ff9b::a9fe:a9fe", "link-local"),
        ("2002:a00:1::", "private"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_forbidden_addresses(address: str, reason: str | None) -> None:
    result = forbidden_reason(ipaddress.ip_address(address))
    if reason is None:
        assert result is None
    else:
        assert result is not None and reason in result


def test_unsupported_scheme_and_unresolvable_host(tmp_path: Path) -> None:
    with pytest.raises(URLRefusedError, match="only http and https"):
        prepare_data(DataSource(urls=("file:///etc/passwd",)), tmp_path, ALL)
    with pytest.raises(DatasetError, match="cannot resolve"):
        prepare_data(DataSource(urls=("https://no-such-host.invalid/data.jsonl",)), tmp_path, ALL)


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("empty.jsonl", "", "is empty"),
        (
            "bad.jsonl",
            '{"messages": [{"role": "user", "content": "hi"}]}\n{not json\n',
            "line 2 is not valid JSON",
        ),
        ("cols.jsonl", '{"question": "a", "answer": "b"}\n', "missing columns"),
        ("noassistant.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n', "no assistant message"),
        ("role.jsonl", '{"messages": [{"role": "bot", "content": "hi"}]}\n', "unknown role 'bot'"),
        ("array.json", "[1, 2]", "item 1 is not a JSON object"),
        ("broken.parquet", "PAR1 this is not parquet", "cannot read it as parquet"),
        ("nulls.jsonl", '{"prompt": "a", "completion": null}\n', "'completion' must be a non-empty string"),
    ],
)
def test_bad_datasets_name_the_url(
    file_server: FileServer, tmp_path: Path, name: str, content: str, fragment: str
) -> None:
    (file_server.root / name).write_text(content)
    url = file_server.url(name)
    with pytest.raises(DatasetError) as caught:
        prepare_data(DataSource(urls=(url,)), tmp_path, ALL, allow_private_urls=True)
    assert url in str(caught.value)
    assert fragment in str(caught.value)


def test_http_errors_and_unknown_formats(file_server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="HTTP 404"):
        prepare_data(
            DataSource(urls=(file_server.url("missing.jsonl"),)), tmp_path, ALL, allow_private_urls=True
        )
    (file_server.root / "mystery").write_bytes(b"\x00\x01binary")
    file_server.content_types["/mystery"] = "application/octet-stream"
    with pytest.raises(DatasetError, match="cannot tell the file format"):
        prepare_data(DataSource(urls=(file_server.url("mystery"),)), tmp_path, ALL, allow_private_urls=True)


def test_kaito_column_mapping(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "qa.jsonl", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(3)])
    mapped = DatasetConfig(context_column="question", response_column="answer", train_test_split=1)
    loaded = prepare_data(DataSource(path=tmp_path / "qa.jsonl"), tmp_path / "w", mapped)
    assert loaded.format == "prompt_completion"
    assert set(loaded.train.to_pylist()[0]) == {"prompt", "completion"}

    rows = [{"conversation": row["messages"]} for row in chat_rows(2)]
    write_jsonl(tmp_path / "conv.jsonl", rows)
    conv = DatasetConfig(messages_column="conversation", train_test_split=1)
    assert prepare_data(DataSource(path=tmp_path / "conv.jsonl"), tmp_path / "w", conv).format == "messages"

    with pytest.raises(DatasetError, match=r"missing column.*'answer'"):
        prepare_data(
            DataSource(path=tmp_path / "conv.jsonl"),
            tmp_path / "w",
            DatasetConfig(context_column="conversation", response_column="answer"),
        )

    write_jsonl(tmp_path / "text.jsonl", [{"text": "plain text"}] * 2)
    assert prepare_data(DataSource(path=tmp_path / "text.jsonl"), tmp_path / "w", ALL).format == "text"


def test_volume_directory_and_dataset_path(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    (volume / "nested").mkdir(parents=True)
    write_jsonl(volume / "nested" / "train.jsonl", chat_rows(4))
    (volume / "README.md").write_text("not data")
    assert prepare_data(DataSource(path=volume), tmp_path / "w", ALL).train.num_rows == 4
    picked = DatasetConfig(dataset_path="/nested/train.jsonl", train_test_split=1)
    assert prepare_data(DataSource(path=volume), tmp_path / "w", picked).train.num_rows == 4
    with pytest.raises(DatasetError, match="not found"):
        prepare_data(DataSource(path=volume), tmp_path / "w", DatasetConfig(dataset_path="other.jsonl"))
    with pytest.raises(DatasetError, match="must stay inside"):
        prepare_data(DataSource(path=volume), tmp_path / "w", DatasetConfig(dataset_path="../x"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no \.parquet, \.jsonl"):
        prepare_data(DataSource(path=tmp_path / "empty"), tmp_path / "w", ALL)


def test_shuffle_is_seeded(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "t.jsonl", [{"text": f"row {i}"} for i in range(20)])
    config = DatasetConfig(train_test_split=1, shuffle_seed=7)
    first = prepare_data(DataSource(path=tmp_path / "t.jsonl"), tmp_path / "w", config).train.column("text")
    again = prepare_data(DataSource(path=tmp_path / "t.jsonl"), tmp_path / "w", config).train.column("text")
    assert first.to_pylist() == again.to_pylist() != [f"row {i}" for i in range(20)]


def test_data_from_an_oci_image(registry: RegistryServer, tmp_path: Path) -> None:
    content = tmp_path / "image-content"
    content.mkdir()
    write_jsonl(content / "train.jsonl", chat_rows(5))
    ref = registry.ref("datasets/chat", "v1")
    push_data(content, ref)
    loaded = prepare_data(DataSource(image=ref), tmp_path / "w", ALL)
    assert loaded.format == "messages" and loaded.train.num_rows == 5
    assert loaded.sources == (f"{ref}:train.jsonl",)

    with pytest.raises(DatasetError, match=r"input image: manifest of .*missing.* not found"):
        prepare_data(DataSource(image=registry.ref("datasets/missing")), tmp_path / "w", ALL)


def test_exactly_one_source() -> None:
    with pytest.raises(DatasetError, match="exactly one"):
        DataSource()
    with pytest.raises(DatasetError, match="exactly one"):
        DataSource(urls=("https://example.com/a.jsonl",), image="example.com/a:b")
