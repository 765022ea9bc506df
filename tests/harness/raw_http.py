"""Raw HTTP requests to the fake API server, so tests see status, headers and body as kubectl does."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from harness.apiserver.http import ADMIN_TOKEN
from harness.fake_apiserver import FakeApiServer


class Http:
    """Requests as the bearer of `token` (the admin's by default, "" for none); answers are
    (status, headers, JSON body), errors included."""

    def __init__(self, server: FakeApiServer, token: str = ADMIN_TOKEN) -> None:
        self.url = server.url
        self.token = token

    def headers(
        self, accept: str = "application/json", content_type: str = "application/json"
    ) -> dict[str, str]:
        headers = {"Accept": accept, "Content-Type": content_type}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def __call__(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> tuple[int, Any, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers=self.headers(accept, content_type)
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, answer.headers, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, json.loads(exc.read() or b"null")
