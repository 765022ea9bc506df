"""What the ingress makes of the errors a handle raises: the replica's own refusal, or Serve's."""

from __future__ import annotations

import pytest
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError

from serve_apps.errors import ModelNotFound, Overloaded
from serve_apps.ingress import replica_refusals


def test_a_replicas_refusal_is_raised_as_itself() -> None:
    refusal = ModelNotFound("no such adapter", param="model", headers={"x-kairay-replica": "r"})
    with pytest.raises(ModelNotFound) as info, replica_refusals(503):
        raise RayTaskError("generate", "traceback", refusal).as_instanceof_cause()
    assert info.value is refusal
    assert info.value.headers == {"x-kairay-replica": "r"}


def test_a_full_deployment_is_an_overload_with_the_workspaces_status() -> None:
    with pytest.raises(Overloaded) as info, replica_refusals(429):
        raise BackPressureError(num_queued_requests=8, max_queued_requests=8)
    assert info.value.http_status == 429
    assert info.value.headers == {"Retry-After": "1"}


def test_other_failures_pass_unchanged() -> None:
    failure = RayTaskError("generate", "traceback", RuntimeError("engine died"))
    with pytest.raises(RayTaskError) as info, replica_refusals(503):
        raise failure
    assert info.value is failure
