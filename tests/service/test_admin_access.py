"""Issue 20, item 14: with no API key set, the admin routes answer only clients on loopback
(compose publishes the port, and its default is no key); with a key, the key is enough."""

from __future__ import annotations

import pytest

OUTSIDE = ("203.0.113.7", 40000)  # TEST-NET-3: never a local address


def _error(response) -> dict[str, str]:  # type: ignore[no-untyped-def]
    error: dict[str, str] = response.json()["error"]
    return error


def test_reload_without_a_key_is_refused_off_loopback(fake_app) -> None:  # type: ignore[no-untyped-def]
    with fake_app(client=OUTSIDE) as client:
        r = client.post("/admin/reload")
        assert r.status_code == 403, r.text
        assert _error(r)["code"] == "forbidden"
        assert "loopback" in _error(r)["message"] and "FEATCACHE_API_KEY" in _error(r)["message"]
        assert client.get("/health").status_code == 200  # only the admin routes
        assert client.get("/heads").status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_reload_without_a_key_answers_on_loopback(fake_app, host: str) -> None:  # type: ignore[no-untyped-def]
    with fake_app(client=(host, 40000)) as client:
        r = client.post("/admin/reload")
        # Through the access check: the route itself answers (no --heads-dir to rescan).
        assert r.status_code == 409 and _error(r)["code"] == "no_heads_dir", r.text


@pytest.mark.parametrize("host", ["::ffff:203.0.113.7", "testclient", "10.0.0.1"])
def test_other_addresses_are_not_loopback(fake_app, host: str) -> None:  # type: ignore[no-untyped-def]
    with fake_app(client=(host, 40000)) as client:
        assert client.post("/admin/reload").status_code == 403


def test_with_a_key_the_key_is_enough(fake_app) -> None:  # type: ignore[no-untyped-def]
    with fake_app(client=OUTSIDE, api_key="s3cret") as client:
        assert client.post("/admin/reload").status_code == 401
        r = client.post("/admin/reload", headers={"X-API-Key": "s3cret"})
        assert r.status_code == 409 and _error(r)["code"] == "no_heads_dir", r.text
