"""The fake ARM refuses what ARM refuses, throttles and fails deletes on demand: over raw HTTP (the wire
shape) and through the real `azure-mgmt-containerservice` client (what the SDK makes of it)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.containerservice.aio import ContainerServiceClient
from azure.mgmt.containerservice.models import AgentPool

from tests.harness.fake_arm import FAKE_TOKEN, FakeArm, FakeTokenCredential, loopback_client_kwargs

SUB = "00000000-0000-0000-0000-000000000001"
CLUSTER = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/aks"
POOLS = f"{CLUSTER}/agentPools"
API = "api-version=2024-09-01"


@pytest.fixture
def arm() -> Iterator[FakeArm]:
    with FakeArm(polls_until_done=1) as server:
        yield server


def call(arm: FakeArm, method: str, pool: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{arm.base_url}{POOLS}/{pool}?{API}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {FAKE_TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, dict(response.headers), json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, dict(error.headers), json.loads(raw) if raw else None


def pool(**properties: Any) -> dict[str, Any]:
    return {"properties": {"vmSize": "Standard_NC6s_v3", "count": 1, "mode": "User", **properties}}


@pytest.mark.parametrize(
    "vm_size", ["Standard_NC24ads_A100_v4", "Standard_D4s_v3", "Standard_M128-64ms", "Standard_DS2_v2"]
)
def test_catalog_and_azure_named_vm_sizes_are_accepted(arm: FakeArm, vm_size: str) -> None:
    status, _, body = call(arm, "PUT", "gpu1", pool(vmSize=vm_size))
    assert status == 201, body


@pytest.mark.parametrize(
    ("name", "properties", "code", "words"),
    [
        ("gpu1", {"vmSize": "Standard_Imaginary_v9"}, "VMSizeNotSupported", "Standard_Imaginary_v9"),
        ("gpu1", {"vmSize": "Standard_Z1"}, "VMSizeNotSupported", "Standard_Z1"),
        ("gpu1", {"count": 5000}, "InvalidParameter", "agentPoolProfile.count"),
        ("gpu1", {"count": -1}, "InvalidParameter", "agentPoolProfile.count"),
        ("gpu1", {"count": 0, "mode": "System"}, "InvalidParameter", "between 1 and 1000"),
        ("gpu1", {"mode": "Foo"}, "InvalidParameter", "agentPoolProfile.mode"),
        ("gpu1", {"osType": "Plan9"}, "InvalidParameter", "agentPoolProfile.osType"),
        ("gpu1", {"type": "Scale"}, "InvalidParameter", "agentPoolProfile.type"),
        ("gpu1", {"scaleSetPriority": "Cheap"}, "InvalidParameter", "agentPoolProfile.scaleSetPriority"),
        ("GPU1", {}, "InvalidAgentPoolName", "lowercase"),
        ("1gpu", {}, "InvalidAgentPoolName", "start with a lowercase letter"),
        ("gpu-1", {}, "InvalidAgentPoolName", "letters and numbers"),
        ("abcdefghijklm", {}, "InvalidAgentPoolName", "at most 12"),
        ("wingpu1", {"osType": "Windows"}, "InvalidAgentPoolName", "at most 6"),
    ],
)
def test_what_arm_refuses_is_a_400_with_an_arm_error_body(
    arm: FakeArm, name: str, properties: dict[str, Any], code: str, words: str
) -> None:
    status, _, body = call(arm, "PUT", name, pool(**properties))
    assert status == 400
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert words in body["error"]["message"]
    assert arm.pool_names() == []


def test_throttling_every_nth_request_answers_429_with_retry_after(arm: FakeArm) -> None:
    arm.throttle_every = 2
    arm.retry_after_seconds = 3
    answers = [call(arm, "GET", "gpu1") for _ in range(4)]
    assert [status for status, _, _ in answers] == [404, 429, 404, 429]
    _, headers, body = answers[1]
    assert headers["Retry-After"] == "3"
    assert body["error"]["code"] == "TooManyRequests"


def test_throttling_switch(arm: FakeArm) -> None:
    arm.throttled = True
    assert call(arm, "PUT", "gpu1", pool())[0] == 429
    arm.throttled = False
    assert call(arm, "PUT", "gpu1", pool())[0] == 201


def test_a_failed_delete_leaves_the_pool(arm: FakeArm) -> None:
    assert call(arm, "PUT", "gpu1", pool())[0] == 201
    call(arm, "GET", "gpu1")  # the create finishes on this look
    arm.fail_next_delete("OperationNotAllowed", "Cannot delete: the cluster is being upgraded.")
    status, _, body = call(arm, "DELETE", "gpu1")
    assert (status, body["error"]["code"]) == (409, "OperationNotAllowed")
    assert arm.pool_names() == ["gpu1"]
    assert call(arm, "DELETE", "gpu1")[0] == 202


def test_the_sdk_retries_a_throttled_request_after_retry_after(arm: FakeArm) -> None:
    """With the SDK's default retry policy (the one `kairay controller` runs with), a 429 is retried
    after Retry-After, and a refused PUT surfaces as Azure's code."""
    arm.throttle_every = 2
    arm.retry_after_seconds = 1
    credential = FakeTokenCredential()
    kwargs = {k: v for k, v in loopback_client_kwargs(credential).items() if k != "retry_total"}

    async def scenario() -> None:
        async with ContainerServiceClient(credential, SUB, base_url=arm.base_url, **kwargs) as client:
            started = time.monotonic()
            with pytest.raises(HttpResponseError) as missing:
                await client.agent_pools.get("rg", "aks", "gpu1")  # 1st request: 404
            assert missing.value.status_code == 404
            await client.agent_pools.begin_create_or_update(
                "rg", "aks", "gpu1", AgentPool(pool()), polling=False
            )
            assert time.monotonic() - started >= 1.0  # the 2nd request was throttled, then retried
            arm.throttle_every = 0
            with pytest.raises(HttpResponseError) as refused:
                await client.agent_pools.begin_create_or_update(
                    "rg", "aks", "gpu2", AgentPool(pool(vmSize="Standard_Nope")), polling=False
                )
            assert refused.value.status_code == 400
            assert refused.value.error is not None and refused.value.error.code == "VMSizeNotSupported"

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    assert [r.status for r in arm.puts("gpu1")] == [429, 201]
