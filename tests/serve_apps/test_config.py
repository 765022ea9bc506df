"""The rendered app config and the Serve config built from it (pure)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_apps.config import INGRESS_DEPLOYMENT, LLM_DEPLOYMENT, AdaptersConfig, AppConfig, serve_config


def app(**overrides: object) -> AppConfig:
    base: dict[str, object] = {"name": "ws", "model": {"name": "m", "preset": "m"}}
    base.update(overrides)
    return AppConfig.model_validate(base)


def test_adapters_travel_as_user_config_not_args() -> None:
    config = serve_config(app(adapters=[{"name": "a", "path": "/x", "strength": 0.5}]))
    application = config["applications"][0]
    assert "adapters" not in application["args"]
    by_name = {d["name"]: d for d in application["deployments"]}
    assert by_name[LLM_DEPLOYMENT]["user_config"]["adapters"][0]["strength"] == 0.5
    assert by_name[INGRESS_DEPLOYMENT]["user_config"] == by_name[LLM_DEPLOYMENT]["user_config"]
    # Separate objects, so YAML output carries no anchors.
    assert by_name[INGRESS_DEPLOYMENT]["user_config"] is not by_name[LLM_DEPLOYMENT]["user_config"]


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
