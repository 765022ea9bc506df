"""WorkspaceOptions: the annotations kairay reads, typed, and refused with the key that is wrong."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kairay.api.options import Autoscaling, WorkspaceOptions


def test_absent_annotations_take_the_defaults() -> None:
    options = WorkspaceOptions.model_validate({"other.io/ignored": "x"})
    assert options.runtime == "vllm"
    assert options.autoscaling is None
    assert (options.max_ongoing_requests, options.max_queued_requests) == (None, None)


def test_annotations_are_typed() -> None:
    options = WorkspaceOptions.model_validate(
        {
            "kaito.sh/runtime": "transformers",
            "kairay.io/min-replicas": "0",
            "kairay.io/max-replicas": "3",
            "kairay.io/max-ongoing-requests": "8",
            "kairay.io/max-queued-requests": "0",
        }
    )
    assert options.runtime == "transformers"
    assert options.autoscaling == Autoscaling(0, 3)
    assert (options.max_ongoing_requests, options.max_queued_requests) == (8, 0)


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("kaito.sh/runtime", "tgi", "must be one of vllm, transformers, not 'tgi'"),
        ("kairay.io/max-ongoing-requests", "0", "must be a whole number of at least 1, not '0'"),
        ("kairay.io/max-queued-requests", "many", "must be a whole number of at least 0, not 'many'"),
    ],
)
def test_a_bad_annotation_names_its_key(key: str, value: str, reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        WorkspaceOptions.model_validate({key: value})
    (error,) = info.value.errors()
    assert error["ctx"] == {"key": key, "reason": reason}
