"""Regenerate harness/kuberay_schema.json from KubeRay's released CRDs.

    python scripts/kuberay_schema.py PATH --release v1.7.0 [--out FILE]

PATH is a KubeRay checkout (its `ray-operator/config/crd/bases/` is read) or a directory holding
`ray.io_rayservices.yaml`, `ray.io_rayjobs.yaml` and `ray.io_rayclusters.yaml`. The output keeps the
schema facts of each kind's `ray.io/v1` version (paths, types, formats, enums, required lists,
defaults, bounds, patterns, the `x-kubernetes-*` markers and CEL rules) and drops the prose, so the
fake KubeRay and the fake API server judge objects as the released CRDs do without shipping them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

KINDS = {"RayService": "rayservices", "RayJob": "rayjobs", "RayCluster": "rayclusters"}
VERSION = "v1"
CRD_DIR = Path("ray-operator/config/crd/bases")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "harness/kuberay_schema.json"
# Prose and examples: everything else in a CRD schema is a fact the API server acts on.
_PROSE = frozenset({"description", "example", "externalDocs", "title"})
# Keys whose values are data, not nested schemas (their entries must not be filtered as keywords).
_DATA = frozenset({"enum", "required", "default", "x-kubernetes-list-map-keys", "x-kubernetes-validations"})


def crd_dir(path: Path) -> Path:
    return path / CRD_DIR if (path / CRD_DIR).is_dir() else path


def facts(schema: Any) -> Any:
    """`schema` without its prose; CEL rules keep their rule, message and reason."""
    if isinstance(schema, list):
        return [facts(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    kept: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _PROSE:
            continue
        if key == "properties":
            kept[key] = {name: facts(child) for name, child in value.items()}
        elif key == "x-kubernetes-validations":
            kept[key] = [{k: v for k, v in rule.items() if k != "messageExpression" or v} for rule in value]
        elif key in _DATA:
            kept[key] = value
        else:
            kept[key] = facts(value)
    return kept


def paths(schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Every field path the schema declares (`[]` for list items, `{}` for map values)."""
    for name, child in (schema.get("properties") or {}).items():
        path = f"{prefix}.{name}" if prefix else name
        yield path
        yield from paths(child, path)
    items = schema.get("items")
    if isinstance(items, dict):
        yield from paths(items, f"{prefix}[]")
    additional = schema.get("additionalProperties")
    if isinstance(additional, dict):
        yield from paths(additional, f"{prefix}{{}}")


def generate(source: Path, release: str) -> dict[str, Any]:
    directory = crd_dir(source)
    schemas: dict[str, Any] = {}
    for kind, plural in KINDS.items():
        crd = yaml.safe_load((directory / f"ray.io_{plural}.yaml").read_text(encoding="utf-8"))
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == VERSION]
        schemas[kind] = facts(version["schema"]["openAPIV3Schema"])
    return {
        "kuberay": release,
        "source": f"ray-project/kuberay {release}: {CRD_DIR}/ray.io_{{{','.join(KINDS.values())}}}.yaml, "
        f"version {VERSION}; descriptions removed",
        "regenerate": f"python scripts/kuberay_schema.py <kuberay checkout> --release {release}",
        "schemas": schemas,
    }


def render(document: dict[str, Any]) -> str:
    """The release and provenance first, readable; each kind's schema on one compact line (the
    schemas are 1.5 MB indented, a third of that compact)."""
    lines = [
        f" {json.dumps(key)}: {json.dumps(value)}," for key, value in document.items() if key != "schemas"
    ]
    kinds = [
        f"  {json.dumps(kind)}: {json.dumps(schema, sort_keys=True, separators=(',', ':'))}"
        for kind, schema in document["schemas"].items()
    ]
    return "{\n" + "\n".join(lines) + '\n "schemas": {\n' + ",\n".join(kinds) + "\n }\n}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path, help="a KubeRay checkout or its CRD directory")
    parser.add_argument("--release", required=True, help="the CRDs' KubeRay release, e.g. v1.7.0")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    document = generate(args.path, args.release)
    args.out.write_text(render(document), encoding="utf-8")
    for kind, schema in document["schemas"].items():
        print(f"{kind}: {sum(1 for _ in paths(schema))} paths", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
