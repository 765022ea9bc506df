"""No test replaces a function of the module it tests: `tests/<a>/<b>/test_<c>.py` tests `<a>.<b>.<c>`, so a
`monkeypatch.setattr(<that module>, ...)` or `mock.patch("<that module>.x")` in it is refused. Doubles
belong at the edges (servers, clocks, environment), where the real code still runs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]


def module_under_test(test_file: Path) -> str:
    parts = test_file.relative_to(TESTS).with_suffix("").parts
    return ".".join((*parts[:-1], parts[-1].removeprefix("test_")))


def self_patches(source: str, tested: str) -> list[int]:
    """Lines of `source` that patch `tested` (the module a test file is named after)."""
    tree = ast.parse(source)
    aliases = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name == tested and alias.asname
    }
    aliases |= {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
        if f"{node.module}.{alias.name}" == tested
    }
    found: list[int] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute) or not node.args:
            continue
        target = node.args[0]
        by_object = isinstance(target, ast.Name) and target.id in aliases
        by_name = isinstance(target, ast.Constant) and str(target.value).startswith(f"{tested}.")
        if (node.func.attr in ("setattr", "object") and by_object) or (
            node.func.attr in ("setattr", "patch") and by_name
        ):
            found.append(node.lineno)
    return found


def test_the_check_sees_a_self_patch() -> None:
    source = (
        "from tuning import data as data_module\nmonkeypatch.setattr(data_module, 'forbidden_reason', f)\n"
    )
    assert self_patches(source, "tuning.data") == [2]
    assert self_patches("mock.patch('tuning.data.check_url')\n", "tuning.data") == [1]
    assert self_patches("monkeypatch.setattr(kopf, 'event', f)\n", "tuning.data") == []


@pytest.mark.parametrize(
    "test_file", sorted(TESTS.rglob("test_*.py")), ids=lambda p: str(p.relative_to(TESTS))
)
def test_no_test_patches_the_module_it_tests(test_file: Path) -> None:
    tested = module_under_test(test_file)
    lines = self_patches(test_file.read_text(encoding="utf-8"), tested)
    assert lines == [], f"{test_file.relative_to(TESTS)} patches {tested} at lines {lines}"
