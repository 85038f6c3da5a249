"""Who may see and do what in the console, over HTTP (no browser needed): a daemon in this process,
bound to 127.0.0.1 or, with HTTPS and a token, to every interface (0.0.0.0)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dcim.app.config import ConfigError, load_config
from tests.console.rig import TOKEN, hall
from tests.writes.rig import dcim, running


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dcim test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "console.crt", tmp_path / "console.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def config_file(tmp_path: Path, http: dict[str, Any]) -> Path:
    return hall(tmp_path, http=http, devices=False)


def csrf_of(html: str) -> str:
    match = re.search(r'name=csrf value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


@pytest.mark.parametrize("http", [
    {"host": "0.0.0.0"},
    {"host": "192.0.2.10", "token": None},
    {"host": "::"},
])
def test_bound_elsewhere_without_tls_and_a_token_is_one_clear_config_error(tmp_path: Path,
                                                                           http: dict[str, Any]) -> None:
    path = config_file(tmp_path, http)
    if http.get("token", "") is None:
        data = yaml.safe_load(path.read_text())
        del data["http"]["token"]
        path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    [(where, message)] = caught.value.errors
    assert where == "http"
    assert "is not a loopback address" in message and "http.tls_cert_file" in message
    assert ("http.token" in message) == (http.get("token", "") is None)


def test_a_certificate_needs_its_key(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_config(config_file(tmp_path, {"tls_cert_file": str(cert)}))
    [(_, message)] = caught.value.errors
    assert "tls_cert_file and http.tls_key_file go together" in message


async def test_dcim_check_says_it_in_one_line_and_fails(tmp_path: Path) -> None:
    code, out, err = await dcim("check", "-c", str(config_file(tmp_path, {"host": "0.0.0.0"})))
    assert code != 0 and "OK" not in out
    assert err.count("is not a loopback address") == 1, err


async def test_bound_to_every_interface_it_serves_https_and_every_page_needs_a_login(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    config = load_config(config_file(tmp_path, {"host": "0.0.0.0", "tls_cert_file": str(cert),
                                                "tls_key_file": str(key)}))
    tls = ssl.create_default_context(cafile=str(cert))
    async with running(config) as daemon:
        assert daemon.http is not None and daemon.http.port
        base = f"https://127.0.0.1:{daemon.http.port}"
        # unsafe: the jar keeps cookies of an IP address (127.0.0.1), as a browser does.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls),
                                         cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
            # Plain HTTP on the HTTPS port gets nothing.
            with pytest.raises(aiohttp.ClientError):
                async with aiohttp.ClientSession() as plain, plain.get(f"http://127.0.0.1:{daemon.http.port}/"):
                    pass
            for path in ("/", "/racks/A01", "/devices", "/alarms", "/events"):
                async with client.get(base + path, allow_redirects=False) as response:
                    assert response.status == 303, path
                    assert response.headers["Location"].startswith("/login?next=")
            async with client.get(f"{base}/events/stream") as response:
                assert response.status == 401
            async with client.post(f"{base}/console/login", data={"user": "alice", "password": "guess"},
                                   allow_redirects=False) as response:
                assert response.status == 403
            assert not client.cookie_jar.filter_cookies(base)
            async with client.post(f"{base}/console/login",
                                   data={"user": "alice", "password": TOKEN, "next": "/alarms"},
                                   allow_redirects=False) as response:
                assert response.status == 303 and response.headers["Location"] == "/alarms"
                cookie = response.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" in cookie
            async with client.get(f"{base}/") as response:
                assert response.status == 200
                html = await response.text()
            assert all(f'id="rack-{r}"' in html for r in ("A01", "A02", "B01", "B02"))
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
            async with client.get(f"{base}/alarms") as response:
                csrf = csrf_of(await response.text())

            # A form without the session's CSRF token, or posted from another site, changes nothing.
            form = {"subject": "A01", "minutes": "30", "reason": "swap PSU"}
            async with client.post(f"{base}/console/maintenance", data=form, allow_redirects=False) as response:
                assert response.status == 403
            async with client.post(f"{base}/console/maintenance", data={**form, "csrf": csrf},
                                   headers={"Origin": "https://evil.example"}, allow_redirects=False) as response:
                assert response.status == 403
            assert daemon.rules is not None and daemon.rules.store.maintenance() == []
            async with client.post(f"{base}/console/maintenance", data={**form, "csrf": csrf},
                                   allow_redirects=False) as response:
                assert response.status == 303
            [window] = daemon.rules.store.maintenance()
            assert (window.subject, window.reason) == ("A01", "swap PSU")

            # The API keeps its own rule: a bearer token, whatever the cookie.
            async with client.post(f"{base}/api/v1/maintenance", json={"subject": "A02", "minutes": 5}) as response:
                assert response.status == 401

            async with client.post(f"{base}/console/logout", data={"csrf": csrf}, allow_redirects=False) as r:
                assert r.status == 303
            async with client.get(f"{base}/", allow_redirects=False) as response:
                assert response.status == 303


async def test_on_loopback_anyone_here_may_look_but_acting_needs_a_login(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path, {}))
    async with running(config) as daemon:
        assert daemon.http is not None
        base = f"http://127.0.0.1:{daemon.http.port}"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
            for path in ("/", "/racks/A01", "/devices", "/alarms", "/events", "/static/console.js"):
                async with client.get(base + path) as response:
                    assert response.status == 200, path
            async with client.get(f"{base}/racks/Z99") as response:
                assert response.status == 404
            async with client.get(f"{base}/static/../config.py") as response:
                assert response.status == 404
            async with client.post(f"{base}/console/maintenance", data={"subject": "A01", "minutes": "5"},
                                   allow_redirects=False) as response:
                assert response.status == 401
            async with client.post(f"{base}/console/alarms/cdu-pump-fault%2Fcdu-1/ack", data={},
                                   allow_redirects=False) as response:
                assert response.status == 401
            # Open redirects are not: `next` stays on this server.
            async with client.post(f"{base}/console/login",
                                   data={"user": "bob", "password": TOKEN, "next": "//evil.example/"},
                                   allow_redirects=False) as response:
                assert response.headers["Location"] == "/"
            async with client.get(f"{base}/alarms") as response:
                csrf = csrf_of(await response.text())
            async with client.post(f"{base}/console/alarms/no-such%2Falarm/ack", data={"csrf": csrf}) as response:
                assert response.status == 200  # after the redirect: the alarms page, saying what went wrong
                assert "no alarm no-such/alarm" in await response.text()


async def test_without_a_token_the_console_is_read_only(tmp_path: Path) -> None:
    path = config_file(tmp_path, {})
    data = yaml.safe_load(path.read_text())
    del data["http"]["token"]
    path.write_text(yaml.safe_dump(data))
    async with running(load_config(path)) as daemon:
        assert daemon.http is not None
        base = f"http://127.0.0.1:{daemon.http.port}"
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{base}/alarms") as response:
                assert "nobody can log in" in await response.text()
            async with client.post(f"{base}/console/login", data={"user": "eve", "password": ""},
                                   allow_redirects=False) as response:
                assert response.status == 403


async def test_console_false_leaves_the_api_alone(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path, {"console": False}))
    async with running(config) as daemon:
        assert daemon.http is not None and daemon.console is None
        base = f"http://127.0.0.1:{daemon.http.port}"
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{base}/") as response:
                assert response.status == 404
            async with client.get(f"{base}/api/v1/alarms") as response:
                assert response.status == 200
