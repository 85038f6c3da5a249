"""Secrets in the configuration: never inline, always a reference resolved at load time.

    token: env:INFLUX_TOKEN              # an environment variable
    token: file:/etc/dcim/influx.token   # a file's content, trailing newline stripped
    token: credential:influx-token       # a systemd credential ($CREDENTIALS_DIRECTORY/influx-token)

The resolved value is a pydantic `SecretStr`: it prints as '**********' in logs, errors and `repr`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, SecretStr, WithJsonSchema

FORMS = "env:NAME, file:PATH or credential:NAME"


def resolve_secret(value: Any) -> Any:
    if value is None or isinstance(value, SecretStr):
        return value
    if not isinstance(value, str):
        raise ValueError(f"a secret must be a string reference ({FORMS})")
    scheme, sep, rest = value.partition(":")
    if not sep or scheme not in ("env", "file", "credential") or not rest:
        # Deliberately does not echo the value: it may be the secret itself.
        raise ValueError(f"secrets are never given inline: use {FORMS}")
    if scheme == "env":
        if rest not in os.environ:
            raise ValueError(f"environment variable {rest} is not set")
        return SecretStr(os.environ[rest])
    if scheme == "credential":
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ValueError(f"credential {rest}: $CREDENTIALS_DIRECTORY is not set (not started by systemd?)")
        path = Path(directory) / rest
    else:
        path = Path(rest)
    try:
        return SecretStr(path.read_text().rstrip("\r\n"))
    except OSError as err:
        raise ValueError(f"cannot read secret file {path}: {err.strerror}") from None


# The JSON Schema admits references only, as `resolve_secret` does: an inline secret is flagged in the editor
# already. Whether the variable, file or credential exists is known only where the daemon runs.
_SCHEMA = {
    "type": "string",
    "pattern": r"^(env|file|credential):[\s\S]",
    "writeOnly": True,
    "examples": ["env:INFLUX_TOKEN", "file:/etc/dcim/influx.token", "credential:influx-token"],
}

Secret = Annotated[SecretStr, BeforeValidator(resolve_secret), WithJsonSchema(_SCHEMA)]


def redact_url(url: str) -> str:
    """A URL that may carry a credential (a Slack webhook's path, a token in the query or the user info)
    as something fit for a log: the scheme and host only, `https://hooks.slack.com/...`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<redacted URL>"
    host = rest.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{host}/..." if host else "<redacted URL>"


def redact(text: str, *secrets: str) -> str:
    """`text` with every occurrence of each secret (a URL: all but its scheme and host) taken out."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, redact_url(secret) if "://" in secret else "**********")
    return text
