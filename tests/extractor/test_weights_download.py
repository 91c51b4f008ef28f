"""The ImageNet weights download's connection check goes where the download will: through the
HTTPS proxy when one is set (README, Troubleshooting), no network used."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from extractor import weights

PROXY_VARS = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy",
              "ALL_PROXY", "no_proxy", "NO_PROXY")


@pytest.fixture
def dialled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, int]]:
    """Where the check connects; every connection fails (as offline)."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no cached weights file
    calls: list[tuple[str, int]] = []

    def refuse(address: tuple[str, int], timeout: float | None = None) -> socket.socket:
        calls.append(address)
        raise OSError("unreachable (test)")

    monkeypatch.setattr(weights.socket, "create_connection", refuse)
    return calls


@pytest.mark.parametrize(("env", "expected"), [
    ({}, ("storage.googleapis.com", 443)),
    ({"HTTPS_PROXY": "http://proxy.example:3128"}, ("proxy.example", 3128)),
    ({"https_proxy": "proxy.example:8080"}, ("proxy.example", 8080)),
    ({"HTTPS_PROXY": "http://proxy.example:3128", "NO_PROXY": "googleapis.com"},
     ("storage.googleapis.com", 443)),
])
def test_the_check_dials_the_proxy_when_one_is_set(
    env: dict[str, str], expected: tuple[str, int], dialled: list[tuple[str, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(weights.WeightsError) as info:
        weights.resolve_weights("imagenet")
    assert dialled == [expected]
    assert f"{expected[0]}:{expected[1]} cannot be reached" in str(info.value)
    assert "HTTPS_PROXY" in str(info.value) and weights.WEIGHTS_ENV in str(info.value)
