from __future__ import annotations

from controller.cache import WatchCache


def service(rv: str) -> dict[str, object]:
    return {"metadata": {"namespace": "ns", "name": "ws", "uid": "u", "resourceVersion": rv}}


def test_a_fresh_read_corrects_what_a_dropped_watch_missed() -> None:
    cache = WatchCache()
    cache.observe_service(service("5"))
    cache.observe_rayservice(service("5"))
    # Deleted while the watch was down: a re-list reports no deletion, the fresh read does.
    cache.correct_service("ns", "ws", None)
    cache.correct_rayservice("ns", "ws", service("9"))
    assert cache.service("ns", "ws") is None
    assert cache.rayservice("ns", "ws") == service("9")
    # An older answer does not replace a newer copy.
    cache.correct_rayservice("ns", "ws", service("7"))
    assert cache.rayservice("ns", "ws") == service("9")


def test_a_workspace_the_api_server_no_longer_has_is_forgotten() -> None:
    cache = WatchCache()
    cache.observe_workspace(service("3"))
    cache.forget_workspace("ns", "ws")
    assert cache.workspaces() == []
