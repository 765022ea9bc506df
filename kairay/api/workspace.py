"""The Workspace (kaito.sh) as Python objects.

The CRD (kairay/api/crds/workspace.yaml) is the authority on what a Workspace may contain; these
models mirror it field for field so code past the API edge works with typed, snake_case attributes.
A dict that passed the CRD parses unless its annotations (which no CRD can check) are wrong;
``validate_workspace`` runs both.
"""

from __future__ import annotations

import functools
import re
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails

from kairay.api.errors import FieldError, WorkspaceError
from kairay.api.options import ANNOTATION_ERROR, Autoscaling, Runtime, WorkspaceOptions, annotation_error

ApiVersion = Literal["kaito.sh/v1alpha1", "kaito.sh/v1beta1"]
GROUP = "kaito.sh"
KIND: Literal["Workspace"] = "Workspace"
API_VERSIONS: tuple[ApiVersion, ...] = ("kaito.sh/v1alpha1", "kaito.sh/v1beta1")
STORAGE_API_VERSION: ApiVersion = "kaito.sh/v1beta1"

TuningMethod = Literal["lora", "qlora"]
DEFAULT_ADAPTER_STRENGTH = 1.0

# Condition types, as Kaito names them.
CONDITION_RESOURCE_READY = "ResourceReady"
CONDITION_INFERENCE_READY = "InferenceReady"
CONDITION_JOB_STARTED = "JobStarted"
CONDITION_WORKSPACE_SUCCEEDED = "WorkspaceSucceeded"
# Kaito's v1alpha1 readers look for WorkspaceReady; the controller mirrors WorkspaceSucceeded into it.
CONDITION_WORKSPACE_READY = "WorkspaceReady"

# status.state values, as Kaito names them.
STATE_PENDING = "Pending"
STATE_READY = "Ready"
STATE_NOT_READY = "NotReady"
STATE_RUNNING = "Running"
STATE_SUCCEEDED = "Succeeded"
STATE_FAILED = "Failed"

_NOT_DECLARED = "field not declared in schema"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Spec(BaseModel):
    """Parts of the Workspace: camelCase on the wire, snake_case in Python, nothing undeclared."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ObjectMeta(_Spec):
    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
    deletion_grace_period_seconds: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    finalizers: list[str] = Field(default_factory=list)
    owner_references: list[dict[str, Any]] = Field(default_factory=list)
    managed_fields: list[dict[str, Any]] = Field(default_factory=list)
    self_link: str | None = None

    @field_validator("annotations")
    @classmethod
    def _check_annotations(cls, annotations: dict[str, str]) -> dict[str, str]:
        try:
            WorkspaceOptions.model_validate(annotations)
        except ValidationError as exc:
            # Raised as this field's own error, so the path reads metadata.annotations[<key>].
            (first, *_) = exc.errors()
            ctx = first.get("ctx") or {}
            raise annotation_error(str(ctx.get("key", "")), str(ctx.get("reason", first["msg"]))) from None
        return annotations


class LabelSelectorRequirement(_Spec):
    key: str
    operator: Literal["In"]
    values: list[str] = Field(min_length=1, max_length=1)


class LabelSelector(_Spec):
    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)

    def as_labels(self) -> dict[str, str]:
        """The selector as plain labels: Kaito allows only matchLabels and single-value In."""
        return {**self.match_labels, **{e.key: e.values[0] for e in self.match_expressions}}


class ResourceSpec(_Spec):
    count: int = Field(default=1, ge=1)
    instance_type: str = ""
    label_selector: LabelSelector = Field(default_factory=LabelSelector)
    preferred_nodes: list[str] = Field(default_factory=list)


class PresetOptions(_Spec):
    image: str | None = None
    image_pull_secrets: list[str] = Field(default_factory=list)
    model_access_secret: str | None = None


class PresetSpec(_Spec):
    name: str = Field(min_length=1)
    access_mode: Literal["public", "private"] = "public"
    preset_options: PresetOptions = Field(default_factory=PresetOptions)


class AdapterSource(_Spec):
    name: str
    image: str | None = None
    image_pull_secrets: list[str] = Field(default_factory=list)
    volume_source: dict[str, Any] | None = None


class AdapterSpec(_Spec):
    source: AdapterSource
    strength: str | None = None

    @field_validator("strength")
    @classmethod
    def _check_strength(cls, strength: str | None) -> str | None:
        if strength is not None:
            try:
                value = float(strength)
            except ValueError:
                value = -1.0
            if not 0.0 <= value <= 1.0:
                raise ValueError(
                    f'must be a number between 0 and 1 written as a string, e.g. "0.5", not {strength!r}'
                )
        return strength

    @property
    def strength_value(self) -> float:
        """The strength as a number; Kaito's default is 1.0."""
        return DEFAULT_ADAPTER_STRENGTH if self.strength is None else float(self.strength)


class InferenceSpec(_Spec):
    preset: PresetSpec | None = None
    template: dict[str, Any] | None = None
    config: str | None = None
    adapters: list[AdapterSpec] = Field(default_factory=list)


class DataSource(_Spec):
    name: str | None = None
    urls: list[str] = Field(default_factory=list)
    image: str | None = None
    image_pull_secrets: list[str] = Field(default_factory=list)
    volume_source: dict[str, Any] | None = None


class DataDestination(_Spec):
    image: str | None = None
    image_push_secret: str | None = None
    volume_source: dict[str, Any] | None = None


class TuningSpec(_Spec):
    preset: PresetSpec
    method: TuningMethod
    config: str | None = None
    input: DataSource
    output: DataDestination

    @field_validator("method", mode="before")
    @classmethod
    def _lower_method(cls, method: Any) -> Any:
        # Kaito compares methods case-insensitively ("QLoRA" works); the rest of kairay sees lowercase.
        return method.lower() if isinstance(method, str) else method


class Condition(_Spec):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class WorkspaceStatus(_Spec):
    conditions: list[Condition] = Field(default_factory=list)
    worker_nodes: list[str] = Field(default_factory=list)
    state: str | None = None
    target_node_count: int | None = None

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


class Workspace(_Spec):
    """A Workspace. Like Kaito's, it has no ``spec``: resource, inference and tuning are top level."""

    api_version: ApiVersion = STORAGE_API_VERSION
    kind: Literal["Workspace"] = KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    resource: ResourceSpec = Field(default_factory=ResourceSpec)
    inference: InferenceSpec | None = None
    tuning: TuningSpec | None = None
    status: WorkspaceStatus = Field(default_factory=WorkspaceStatus)

    @model_validator(mode="after")
    def _inference_xor_tuning(self) -> Workspace:
        if (self.inference is None) == (self.tuning is None):
            raise ValueError("exactly one of inference or tuning must be specified")
        return self

    @functools.cached_property
    def options(self) -> WorkspaceOptions:
        """The annotations kairay reads, typed; they were checked when the Workspace was parsed."""
        return WorkspaceOptions.model_validate(self.metadata.annotations)

    @property
    def runtime(self) -> Runtime:
        """The engine, from the kaito.sh/runtime annotation."""
        return self.options.runtime

    @property
    def autoscaling(self) -> Autoscaling | None:
        return self.options.autoscaling

    def to_object(self) -> dict[str, Any]:
        """The Workspace as the JSON object the API server stores (camelCase, no nulls)."""
        obj: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return obj


def parse_workspace(obj: dict[str, Any]) -> Workspace:
    """A Workspace from its JSON/YAML object; WorkspaceError lists every problem with field paths."""
    try:
        return Workspace.model_validate(obj)
    except ValidationError as exc:
        raise WorkspaceError(_field_error(detail) for detail in exc.errors()) from None


def _field_error(detail: ErrorDetails) -> FieldError:
    path = ""
    for part in detail["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _IDENTIFIER.match(part):
            path = f"{path}.{part}" if path else part
        else:
            path += f"[{part}]"
    kind = detail["type"]
    if kind == ANNOTATION_ERROR:
        ctx = detail.get("ctx") or {}
        return FieldError(f"{path}[{ctx.get('key', '')}]", str(ctx.get("reason", detail["msg"])))
    if kind == "extra_forbidden":
        return FieldError(path, _NOT_DECLARED)
    if kind == "missing":
        return FieldError(path, "Required value")
    message = detail["msg"].removeprefix("Value error, ")
    return FieldError(path, message)


def load_workspace_file(path: str | PathLike[str]) -> list[dict[str, Any]]:
    """Every non-empty document of a YAML file (a Workspace, maybe with its ConfigMaps), in order.

    Unreadable files and YAML syntax errors raise WorkspaceError whose field is ``file:line:column``.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise WorkspaceError([FieldError(str(file), f"cannot read file: {exc.strerror or exc}")]) from None
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise WorkspaceError([_yaml_error(file, exc)]) from None
    result: list[dict[str, Any]] = []
    for index, document in enumerate(documents):
        if document is None:
            continue
        if not isinstance(document, dict):
            raise WorkspaceError(
                [FieldError(str(file), f"document {index + 1} is a {type(document).__name__}, not a mapping")]
            )
        result.append(document)
    return result


def _yaml_error(file: Path, exc: yaml.YAMLError) -> FieldError:
    mark = getattr(exc, "problem_mark", None)
    where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(file)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    return FieldError(where, f"invalid YAML: {problem}" + (f" ({context})" if context else ""))
