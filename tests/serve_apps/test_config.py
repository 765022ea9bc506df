"""The rendered app config and the Serve config built from it (pure)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_apps.config import (
    CONTROL_HEADROOM,
    INGRESS_DEPLOYMENT,
    LLM_DEPLOYMENT,
    AdaptersConfig,
    AppConfig,
    serve_config,
)


def app(**overrides: object) -> AppConfig:
    base: dict[str, object] = {"name": "ws", "model": {"name": "m", "preset": "m"}}
    base.update(overrides)
    return AppConfig.model_validate(base)


def test_adapters_travel_as_user_config_not_args() -> None:
    config = serve_config(app(num_replicas=2, adapters=[{"name": "a", "path": "/x", "strength": 0.5}]))
    application = config["applications"][0]
    assert "adapters" not in application["args"]
    by_name = {d["name"]: d for d in application["deployments"]}
    assert by_name[LLM_DEPLOYMENT]["user_config"]["adapters"][0]["strength"] == 0.5
    assert by_name[INGRESS_DEPLOYMENT]["user_config"] == by_name[LLM_DEPLOYMENT]["user_config"]
    # Separate objects, so YAML output carries no anchors.
    assert by_name[INGRESS_DEPLOYMENT]["user_config"] is not by_name[LLM_DEPLOYMENT]["user_config"]


def test_one_replica_serves_http_itself_and_admits_its_own_load() -> None:
    config = app(limits={"max_ongoing_requests": 8, "max_queued_requests": 4})
    deployments = serve_config(config)["applications"][0]["deployments"]
    assert [d["name"] for d in deployments] == [LLM_DEPLOYMENT]
    # The replica refuses beyond 8 + 4 itself (a JSON error); Serve lets probes through above that.
    assert deployments[0]["max_ongoing_requests"] == 8 + 4 + CONTROL_HEADROOM
    assert deployments[0]["max_queued_requests"] == 8 + 4 + CONTROL_HEADROOM


@pytest.mark.parametrize(
    "overrides", [{"num_replicas": 2}, {"autoscaling": {"min_replicas": 1, "max_replicas": 1}}]
)
def test_replicas_that_may_be_many_get_an_adapter_aware_ingress(overrides: dict[str, object]) -> None:
    config = app(limits={"max_ongoing_requests": 8, "max_queued_requests": 4}, **overrides)
    deployments = serve_config(config)["applications"][0]["deployments"]
    assert [d["name"] for d in deployments] == [LLM_DEPLOYMENT, INGRESS_DEPLOYMENT]
    assert (deployments[0]["max_ongoing_requests"], deployments[0]["max_queued_requests"]) == (8, 4)


def test_adapter_change_leaves_args_unchanged() -> None:
    one = serve_config(app(adapters=[{"name": "a", "path": "/x"}]))
    two = serve_config(app(adapters=[{"name": "a", "path": "/x"}, {"name": "b", "image": "r/b:1"}]))
    assert one["applications"][0]["args"] == two["applications"][0]["args"]


def test_autoscaling_replaces_num_replicas() -> None:
    config = serve_config(app(autoscaling={"min_replicas": 1, "max_replicas": 3}))
    llm = config["applications"][0]["deployments"][0]
    assert "num_replicas" not in llm
    assert llm["autoscaling_config"]["max_replicas"] == 3


@pytest.mark.parametrize(
    "adapter",
    [
        {"name": "Bad_Name", "path": "/x"},
        {"name": "a", "path": "/x", "image": "r/a:1"},
        {"name": "a"},
        {"name": "a", "path": "/x", "strength": 1.5},
    ],
)
def test_bad_adapters_are_rejected(adapter: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        AdaptersConfig.model_validate({"adapters": [adapter]})


def test_duplicate_adapter_names_are_rejected() -> None:
    with pytest.raises(ValidationError, match="duplicate"):
        AdaptersConfig.model_validate(
            {"adapters": [{"name": "a", "path": "/x"}, {"name": "a", "path": "/y"}]}
        )
