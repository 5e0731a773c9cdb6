"""Turning the API's error answers into messages a person can act on."""

from __future__ import annotations

import httpx
import pytest

from dashboard.api import ApiClient, ApiError, error_from_response


def _response(status: int, **kwargs) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", "http://api/x"), **kwargs)


def test_a_422_names_each_field() -> None:
    err = error_from_response(
        _response(
            422,
            json={
                "detail": [
                    {"loc": ["body", "lr"], "msg": "Input should be greater than 0"},
                    {"loc": ["body", "lr"], "msg": "second problem"},
                    {"loc": ["body"], "msg": "a job config is a mapping of fields"},
                ]
            },
        )
    )
    assert err.status == 422
    assert err.field_errors == {"lr": "Input should be greater than 0; second problem"}
    assert err.message == (
        "lr: Input should be greater than 0; lr: second problem; "
        "a job config is a mapping of fields (HTTP 422)"
    )


def test_a_plain_detail_and_a_non_json_body() -> None:
    assert error_from_response(_response(404, json={"detail": "run 9 not found"})).message == (
        "run 9 not found (HTTP 404)"
    )
    err = error_from_response(_response(502, text="Bad Gateway from the proxy"))
    assert err.message == "Bad Gateway from the proxy (HTTP 502)" and not err.unreachable


def test_the_token_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("DORA_API_TOKEN", "from-env")
    monkeypatch.setenv("DORA_API_URL", "http://api.example:8000/")
    client = ApiClient()
    assert client.token == "from-env" and client.base_url == "http://api.example:8000"


def test_methods_are_fetched_once_per_api_for_the_process() -> None:
    asked: list[str] = []
    answer = [
        {"name": "a", "prunes": True, "adapter": True, "description": "x"},
        {"name": "b", "prunes": False, "adapter": False, "description": "y"},
    ]
    fail = [True]

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        if fail[0]:
            return httpx.Response(503, json={"detail": "starting up"})
        return httpx.Response(200, json=answer)

    def client() -> ApiClient:
        api = ApiClient("http://methods.test", token="")
        api._http = httpx.Client(base_url=api.base_url, transport=httpx.MockTransport(handler))
        return api

    with pytest.raises(ApiError):
        client().methods()  # a failed answer is not kept
    fail[0] = False
    first = client().methods()
    assert list(first) == ["a", "b"] and first["b"]["adapter"] is False
    assert client().methods() == first  # another client of the same API: no request
    assert asked == ["/api/methods", "/api/methods"]
