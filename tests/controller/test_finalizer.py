"""What the finalizer hands the node provisioner to release."""

from __future__ import annotations

from controller.finalizer import release_request


def test_release_requests_read_the_workspace_without_validation() -> None:
    released = release_request(
        {"metadata": {"name": "ws", "namespace": "team", "uid": "u-1"}, "resource": {"count": 3}}
    )
    assert (released.name, released.node_count, released.instance_type) == ("ws", 3, "")
