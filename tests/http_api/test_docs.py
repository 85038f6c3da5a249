"""The `http:` sample of docs/http-api.md loads through the daemon's parser, and an inline token is refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dcim.app.config import ConfigError, parse_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "http-api.md"


def test_documented_http_section_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "dcim_http-token").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    block = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)[0]
    config = parse_config({"site": {"id": "hall-1"}, **yaml.safe_load(block)})
    assert config.http.host == "127.0.0.1" and config.http.port == 8470
    assert config.http.token is not None and config.http.token.get_secret_value() == "s3cret"


def test_inline_token_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"site": {"id": "hall-1"}, "http": {"token": "plain-text-token"}})
    [(path, message)] = err.value.errors
    assert path == "http.token" and "plain-text-token" not in message
