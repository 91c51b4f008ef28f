"""Settings read from files: the API key as a Docker secret (FEATCACHE_API_KEY_FILE)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import Settings


def test_api_key_from_a_secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "api_key"
    secret.write_text("  k3y-from-file-17\n")  # `echo KEY > file` leaves a newline
    monkeypatch.setenv("FEATCACHE_API_KEY_FILE", str(secret))
    monkeypatch.delenv("FEATCACHE_API_KEY", raising=False)
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.api_key is not None and s.api_key.get_secret_value() == "k3y-from-file-17"
    assert "k3y-from-file-17" not in repr(s)


def test_api_key_file_in_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEATCACHE_API_KEY", raising=False)
    monkeypatch.delenv("FEATCACHE_API_KEY_FILE", raising=False)
    (tmp_path / "key").write_text("dotenv-key")
    (tmp_path / ".env").write_text("FEATCACHE_API_KEY_FILE=key\n")
    s = Settings()
    assert s.api_key is not None and s.api_key.get_secret_value() == "dotenv-key"


@pytest.mark.parametrize("case", ["missing", "empty", "both"])
def test_unusable_api_key_file_is_refused(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "api_key"
    if case != "missing":
        secret.write_text("\n" if case == "empty" else "from-file")
    monkeypatch.setenv("FEATCACHE_API_KEY_FILE", str(secret))
    if case == "both":
        monkeypatch.setenv("FEATCACHE_API_KEY", "from-env")
    else:
        monkeypatch.delenv("FEATCACHE_API_KEY", raising=False)
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)  # type: ignore[call-arg]
    message = str(info.value)
    assert {"missing": "cannot be read", "empty": "is empty", "both": "not both"}[case] in message
    assert "from-file" not in message and "from-env" not in message


def test_no_key_means_open(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEATCACHE_API_KEY", raising=False)
    monkeypatch.delenv("FEATCACHE_API_KEY_FILE", raising=False)
    assert Settings(_env_file=None).api_key is None  # type: ignore[call-arg]
