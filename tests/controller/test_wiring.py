"""kopf's credentials from the controller's client configuration."""

from __future__ import annotations

from kubernetes.client import Configuration

from controller.wiring import connection_info


def test_kopf_credentials_from_a_client_configuration() -> None:
    configuration = Configuration(host="https://api.test:6443", api_key={"authorization": "Bearer t0k3n"})
    configuration.ssl_ca_cert = "/ca.crt"
    info = connection_info(configuration)
    assert (info.server, info.scheme, info.token, info.ca_path, info.insecure) == (
        "https://api.test:6443",
        "Bearer",
        "t0k3n",
        "/ca.crt",
        False,
    )
    bare = connection_info(Configuration(host="http://127.0.0.1:1", api_key={"authorization": "raw"}))
    assert (bare.scheme, bare.token) == (None, "raw")
