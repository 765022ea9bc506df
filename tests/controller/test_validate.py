"""Validation verdicts as condition reasons: the catalog errors get Kaito's."""

from __future__ import annotations

from typing import Any

import pytest

from controller.status import problem
from controller.validate import InvalidWorkspace
from presets.validation import validate_workspace
from tests.controller.workspaces import workspace


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"inference": {"preset": {"name": "gpt-17-mega"}}}, "InvalidPreset"),
        ({"resource": {"instanceType": "Standard_Imaginary_v9"}}, "InvalidInstanceType"),
        (
            {
                "resource": {"instanceType": "Standard_NC6s_v3"},
                "metadata": {"annotations": {"kaito.sh/runtime": "transformers"}},
                "inference": {"preset": {"name": "falcon-7b-instruct"}},
            },
            "InsufficientGPUMemory",
        ),
    ],
)
def test_catalog_errors_get_kaito_reasons(changes: dict[str, Any], reason: str) -> None:
    obj = workspace(**changes)
    errors = validate_workspace(obj)
    assert errors
    found = problem(InvalidWorkspace(errors))
    assert found.reason == reason and found.final
    assert str(errors[0]) in found.message
