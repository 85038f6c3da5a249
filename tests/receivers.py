"""Real receivers: an HTTP server (aiohttp) and an SMTP server (aiosmtpd) for alert hooks, and an MQTT
subscriber (aiomqtt) that records what a broker delivers.

The HTTP and SMTP receivers each run in a thread with their own event loop, like aiosmtpd's Controller,
so they answer whether the test is async or not and whatever the code under test does to the test's
loop; their tasks never count as leaks of the test. The MQTT recorder is an async context manager in
the test's loop. All record what they receive, and a test waits for it without sleeping:

    receiver = HttpReceiver().start()
    ...                                        # code under test posts to receiver.url + "/hook"
    [req] = await receiver.wait_for(count=1, timeout=5)
    assert req.json()["rule"] == "rack_power"

``respond(status)`` changes the answer (a hook returning 500), ``fail_next(n)`` fails only the next n
requests (retries), ``stop()`` closes the port (a hook that is down) and ``start()`` reopens the same one.
The SMTP receiver can require STARTTLS (or implicit TLS) with a self-signed certificate made in a temp
dir, and AUTH with a user name and password; ``cafile`` is the certificate a client should trust.
"""

# wait_for(timeout=...) rather than asyncio.timeout(): on a timeout, the error lists what did arrive.
# ruff: noqa: ASYNC109

from __future__ import annotations

import abc
import asyncio
import datetime as dt
import email
import email.message
import email.policy
import ipaddress
import json
import logging
import shutil
import ssl
import tempfile
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import aiomqtt
from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

T = TypeVar("T")
_R = TypeVar("_R")


class _DropLoginDataWarning(logging.Filter):
    """aiosmtpd warns about its own deprecated Session.login_data on every successful AUTH."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_DropLoginDataWarning())


class Recorder(Generic[T]):
    """A thread-safe list of received items that async and sync code can wait on."""

    def __init__(self) -> None:
        self._items: list[T] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def append(self, item: T) -> None:
        with self._lock:
            self._items.append(item)
            self._changed.notify_all()
            waiters = list(self._waiters)
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that waiter's loop has closed; nobody is waiting there any more
                with self._lock:
                    self._waiters.discard((loop, event))

    @property
    def items(self) -> list[T]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def matching(self, where: Callable[[T], bool] | None = None) -> list[T]:
        with self._lock:
            return [i for i in self._items if where is None or where(i)]

    async def wait_for(
        self, count: int = 1, timeout: float = 10.0, *, where: Callable[[T], bool] | None = None
    ) -> list[T]:
        """The items (those ``where`` accepts, if given) once at least ``count`` have arrived;
        TimeoutError listing what did arrive otherwise."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        key = (loop, event)
        deadline = loop.time() + timeout
        with self._lock:
            self._waiters.add(key)
        try:
            while True:
                event.clear()
                items = self.matching(where)
                if len(items) >= count:
                    return items
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(self._timeout_message(count, timeout, where))
                try:
                    await asyncio.wait_for(event.wait(), remaining)
                except TimeoutError:
                    pass  # checked once more above, then reported
        finally:
            with self._lock:
                self._waiters.discard(key)

    def wait_for_sync(
        self, count: int = 1, timeout: float = 10.0, *, where: Callable[[T], bool] | None = None
    ) -> list[T]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                items = [i for i in self._items if where is None or where(i)]
                if len(items) >= count:
                    return items
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
        raise TimeoutError(self._timeout_message(count, timeout, where))

    def _timeout_message(self, count: int, timeout: float, where: Callable[[T], bool] | None) -> str:
        got = self.matching(where)
        total = len(self)
        return (
            f"expected {count} item(s) within {timeout} s, got {len(got)} matching of {total}: {got!r}"
        )[:2000]


class _LoopThread:
    """An event loop running in a daemon thread; coroutines are submitted from any thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Awaitable[_R], timeout: float = 10.0) -> _R:
        async def runner() -> _R:
            return await coro

        future: Future[_R] = asyncio.run_coroutine_threadsafe(runner(), self.loop)
        return future.result(timeout)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        # Connections a client left open still have handler tasks; end them before the loop goes.
        self.call(self._cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    @staticmethod
    async def _cancel_all() -> None:
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_asyncgens()


@dataclass(frozen=True)
class SelfSignedCert:
    """A certificate for localhost and 127.0.0.1 with its key, as PEM files in a directory."""

    certfile: Path
    keyfile: Path

    @classmethod
    def create(cls, directory: Path, common_name: str = "localhost") -> SelfSignedCert:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        certfile, keyfile = directory / "cert.pem", directory / "key.pem"
        certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        keyfile.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cls(certfile, keyfile)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.certfile, self.keyfile)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts exactly this certificate (hostname checked)."""
        return ssl.create_default_context(cafile=str(self.certfile))


class _Receiver(abc.ABC):
    """Shared lifecycle: a port fixed at first start, a thread, a temp dir for certificates."""

    host = "127.0.0.1"

    def __init__(self, *, tls: bool, name: str) -> None:
        self.port = 0
        self._name = name
        self._thread: _LoopThread | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix=f"dcim-{name}-"))
        self.cert = SelfSignedCert.create(self._tmp) if tls else None

    @property
    def cafile(self) -> str | None:
        return str(self.cert.certfile) if self.cert is not None else None

    def _loop_thread(self) -> _LoopThread:
        if self._thread is None:
            self._thread = _LoopThread(f"{self._name}-{id(self):x}")
        return self._thread

    def close(self) -> None:
        self.stop()
        if self._thread is not None:
            self._thread.close()
            self._thread = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    @abc.abstractmethod
    def start(self) -> Self:
        """Listen (on the same port as before after a stop)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Close the port."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    body: bytes
    received_at: float = field(default_factory=time.time)

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


class HttpReceiver(_Receiver):
    """An HTTP(S) server that records every request on any path and answers ``status`` (200)."""

    def __init__(self, *, tls: bool = False) -> None:
        super().__init__(tls=tls, name="http-receiver")
        self.recorder: Recorder[HttpRequest] = Recorder()
        self.status = 200
        self.body = b'{"ok": true}'
        self.content_type = "application/json"
        self.delay = 0.0
        self._failures: list[int] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.cert else 'http'}://{self.host}:{self.port}"

    @property
    def requests(self) -> list[HttpRequest]:
        return self.recorder.items

    def respond(
        self, status: int, body: bytes | str = b"", *, content_type: str = "text/plain", delay: float = 0.0
    ) -> None:
        """Answer every later request with this status and body, after ``delay`` seconds."""
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.content_type = content_type
        self.delay = delay

    def fail_next(self, count: int, status: int = 500) -> None:
        """The next ``count`` requests get ``status``; later ones get the normal answer again."""
        self._failures.extend([status] * count)

    async def wait_for(
        self, count: int = 1, timeout: float = 10.0, *, where: Callable[[HttpRequest], bool] | None = None
    ) -> list[HttpRequest]:
        return await self.recorder.wait_for(count, timeout, where=where)

    def wait_for_sync(
        self, count: int = 1, timeout: float = 10.0, *, where: Callable[[HttpRequest], bool] | None = None
    ) -> list[HttpRequest]:
        return self.recorder.wait_for_sync(count, timeout, where=where)

    def clear(self) -> None:
        self.recorder.clear()

    def start(self) -> Self:
        if self._runner is None:
            self._runner = self._loop_thread().call(self._start())
        return self

    def stop(self) -> None:
        """Close the port: clients get connection refused, as from a hook that is down."""
        runner, self._runner = self._runner, None
        if runner is not None and self._thread is not None:
            self._thread.call(runner.cleanup())

    async def _start(self) -> web.AppRunner:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        ssl_context = self.cert.server_context() if self.cert else None
        site = web.TCPSite(runner, self.host, self.port, ssl_context=ssl_context, reuse_address=True)
        await site.start()
        self.port = int(runner.addresses[0][1])
        return runner

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.recorder.append(
            HttpRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
            )
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        if self._failures:
            return web.Response(status=self._failures.pop(0), text="injected failure")
        return web.Response(status=self.status, body=self.body, content_type=self.content_type)


@dataclass(frozen=True)
class SmtpMessage:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    message: email.message.EmailMessage
    tls: bool  # the message came over an encrypted connection (STARTTLS or implicit TLS)
    login: str | None  # the authenticated user name, if the client used AUTH
    received_at: float = field(default_factory=time.time)

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def text(self) -> str:
        """The plain-text body (the text/plain part of a multipart message)."""
        part = self.message.get_body(preferencelist=("plain", "html"))
        return str(part.get_content()) if part is not None else ""


class SmtpReceiver(_Receiver):
    """An SMTP server that records every message it accepts.

    ``starttls=True``: offers STARTTLS and refuses mail before it. ``implicit_tls=True``: TLS from the first
    byte (SMTPS). ``username``/``password``: AUTH PLAIN/LOGIN is required (over TLS only when TLS is on).
    """

    def __init__(
        self, *, starttls: bool = False, implicit_tls: bool = False, username: str | None = None,
        password: str | None = None,
    ) -> None:
        if starttls and implicit_tls:
            raise ValueError("choose starttls or implicit_tls, not both")
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        super().__init__(tls=starttls or implicit_tls, name="smtp-receiver")
        self.starttls = starttls
        self.implicit_tls = implicit_tls
        self.username = username
        self.password = password
        self.recorder: Recorder[SmtpMessage] = Recorder()
        self.reply = "250 Message accepted for delivery"
        self.auth_failures = 0
        self._server: asyncio.Server | None = None

    @property
    def messages(self) -> list[SmtpMessage]:
        return self.recorder.items

    def respond(self, reply: str) -> None:
        """The SMTP reply to DATA, e.g. ``"451 Try again later"`` for a transient failure."""
        self.reply = reply

    async def wait_for(
        self, count: int = 1, timeout: float = 10.0, *, where: Callable[[SmtpMessage], bool] | None = None
    ) -> list[SmtpMessage]:
        return await self.recorder.wait_for(count, timeout, where=where)

    def wait_for_sync(
        self, count: int = 1, timeout: float = 10.0, *, where: Callable[[SmtpMessage], bool] | None = None
    ) -> list[SmtpMessage]:
        return self.recorder.wait_for_sync(count, timeout, where=where)

    def clear(self) -> None:
        self.recorder.clear()

    def start(self) -> Self:
        if self._server is None:
            self._server = self._loop_thread().call(self._start())
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None and self._thread is not None:
            self._thread.call(self._close(server))

    @staticmethod
    async def _close(server: asyncio.Server) -> None:
        server.close()
        await server.wait_closed()

    async def _start(self) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            self._protocol,
            self.host,
            self.port,
            ssl=self.cert.server_context() if self.cert and self.implicit_tls else None,
            reuse_address=True,
        )
        self.port = int(server.sockets[0].getsockname()[1])
        return server

    def _protocol(self) -> SMTP:
        auth = self.username is not None
        with warnings.catch_warnings():
            # aiosmtpd warns about AUTH without STARTTLS; with implicit TLS the link is already
            # encrypted, and plain-text AUTH is a case tests may want on purpose.
            warnings.simplefilter("ignore")
            return SMTP(
                self,
                hostname="localhost",  # not socket.getfqdn(), which can wait on DNS
                tls_context=self.cert.server_context() if self.cert and self.starttls else None,
                require_starttls=self.starttls,
                auth_required=auth,
                # aiosmtpd only counts STARTTLS as TLS; an implicit-TLS connection is encrypted anyway.
                auth_require_tls=auth and self.starttls,
                authenticator=self._authenticate if auth else None,
                loop=asyncio.get_running_loop(),
            )

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == self.username
            and auth_data.password.decode() == self.password
        )
        if not ok:
            self.auth_failures += 1
            # handled=False: aiosmtpd then sends the 535 reply itself.
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=auth_data)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        if self.reply.startswith("250"):
            login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
            parsed = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(parsed, email.message.EmailMessage)
            self.recorder.append(
                SmtpMessage(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=list(envelope.rcpt_tos),
                    data=raw,
                    message=parsed,
                    tls=server.transport is not None
                    and server.transport.get_extra_info("ssl_object") is not None,
                    login=login,
                )
            )
        return self.reply


@dataclass(frozen=True)
class MqttMessage:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    user_properties: dict[str, str]  # MQTT 5 user properties, empty for 3.1.1
    received_at: float = field(default_factory=time.time)

    @property
    def text(self) -> str:
        return self.payload.decode()

    def lines(self) -> list[str]:
        """The payload as InfluxDB line protocol lines."""
        return [line for line in self.text.splitlines() if line.strip()]

    def json(self) -> Any:
        return json.loads(self.payload)

    def matches(self, topic_filter: str) -> bool:
        return aiomqtt.Topic(self.topic).matches(topic_filter)


class MqttRecorder:
    """Subscribes to topic filters and records every message, in the test's event loop:

        async with MqttRecorder(mosquitto.host, mosquitto.port, "dcim/#") as mqtt:
            ...
            [status] = await mqtt.wait_for(1, where=lambda m: m.matches("dcim/+/status/cdu-1"))

    It reconnects and subscribes again when the broker goes away (``disconnects`` counts the losses;
    ``await connected()`` waits for the subscription to be back), so it can watch across an outage.
    Its task is cancelled and awaited on exit, so it never counts as a leaked task.
    """

    def __init__(
        self, host: str, port: int, *topics: str, qos: int = 1, v5: bool = True,
        identifier: str | None = None, connect_timeout: float = 10.0,
    ) -> None:
        if not topics:
            raise ValueError("give at least one topic filter")
        self.host = host
        self.port = port
        self.topics = topics
        self.qos = qos
        self.protocol = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
        self.identifier = identifier or f"dcim-test-recorder-{id(self):x}"
        self.connect_timeout = connect_timeout
        self.recorder: Recorder[MqttMessage] = Recorder()
        self.disconnects = 0
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def messages(self) -> list[MqttMessage]:
        return self.recorder.items

    async def wait_for(
        self, count: int = 1, timeout: float = 10.0, *, where: Callable[[MqttMessage], bool] | None = None
    ) -> list[MqttMessage]:
        return await self.recorder.wait_for(count, timeout, where=where)

    def clear(self) -> None:
        self.recorder.clear()

    async def connected(self, timeout: float = 10.0) -> None:
        """Wait until connected and subscribed (again, after an outage)."""
        task = self._task
        if task is None:
            raise RuntimeError("MqttRecorder is not running: use it with 'async with'")
        waiter = asyncio.ensure_future(self._connected.wait())
        try:
            done, _ = await asyncio.wait({waiter, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task in done:
            task.result()  # the recorder died: say why
        if waiter not in done:
            raise TimeoutError(f"MQTT recorder not connected to {self.host}:{self.port} within {timeout} s")

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name=f"mqtt-recorder {' '.join(self.topics)}")
        try:
            await self.connected(self.connect_timeout)
        except BaseException:
            await self._cancel()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._cancel()

    async def _cancel(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError:
                if self._connected.is_set():
                    self.disconnects += 1
                self._connected.clear()
            await asyncio.sleep(0.05)  # pace reconnect attempts while the broker is away

    async def _session(self) -> None:
        async with aiomqtt.Client(
            self.host, self.port, identifier=self.identifier, protocol=self.protocol, timeout=5
        ) as client:
            for topic in self.topics:
                await client.subscribe(topic, qos=self.qos)
            self._connected.set()
            async for message in client.messages:
                props = getattr(message.properties, "UserProperty", None) or []
                payload = message.payload
                self.recorder.append(
                    MqttMessage(
                        topic=str(message.topic),
                        payload=payload if isinstance(payload, bytes) else str(payload).encode(),
                        qos=message.qos,
                        retain=message.retain,
                        user_properties={str(k): str(v) for k, v in props},
                    )
                )
