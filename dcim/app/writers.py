"""Database writers: line protocol into InfluxDB (or anything that speaks its write API).

- `V2Writer`: the /api/v2/write API through influxdb-client (InfluxDB 2.x, 3.x, 1.8+, VictoriaMetrics).
- `V1Writer`: the /write endpoint of InfluxDB before 1.8, with the same line protocol.

Both raise `RetryableWriteError` for what may succeed later (database down, 5xx, timeouts) and
`RejectedWriteError` for what never will (a malformed line, a field type conflict): the ingest retries the
first with backoff and drops the second, counted and logged, so one bad line never blocks the stream.
A refusal that says "partial write" (InfluxDB 1.x, 2.x and 3.x say so) means the database stored the other
lines of the request: `RejectedWriteError.partial` is then true, with the count it dropped where it says.
"""

from __future__ import annotations

import re
from typing import Protocol

import aiohttp
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.rest import ApiException

from dcim.app.config import InfluxConfig


class RetryableWriteError(Exception):
    pass


class RejectedWriteError(Exception):
    def __init__(self, message: str, *, partial: bool = False, dropped: int | None = None) -> None:
        super().__init__(message)
        # The database wrote the rest of the request and refused `dropped` lines of it (None: not said).
        self.partial = partial
        self.dropped = dropped


_DROPPED = re.compile(r"dropped=(\d{1,9})")


class Writer(Protocol):
    async def open(self) -> None: ...

    async def write(self, lines: list[bytes]) -> None: ...

    async def close(self) -> None: ...


def _classify(status: int | None, detail: str) -> Exception:
    if status is not None and 400 <= status < 500 and status not in (401, 403, 404, 408, 429):
        dropped = _DROPPED.search(detail)
        return RejectedWriteError(f"HTTP {status}: {detail.strip()[:300]}", partial="partial write" in detail,
                                  dropped=int(dropped.group(1)) if dropped else None)
    return RetryableWriteError(f"HTTP {status}: {detail.strip()[:300]}" if status else detail)


class V2Writer:
    def __init__(self, config: InfluxConfig) -> None:
        self.config = config
        self._client: InfluxDBClientAsync | None = None

    async def open(self) -> None:
        token = self.config.token.get_secret_value() if self.config.token else ""
        self._client = InfluxDBClientAsync(
            url=self.config.url, token=token, org=self.config.org, timeout=int(self.config.timeout * 1000)
        )

    async def write(self, lines: list[bytes]) -> None:
        assert self._client is not None
        try:
            await self._client.write_api().write(
                bucket=self.config.bucket, org=self.config.org, record=b"\n".join(lines)
            )
        except ApiException as err:
            raise _classify(err.status, str(err.body or err.reason)) from err
        except InfluxDBError as err:
            status = err.response.status if err.response is not None else None
            raise _classify(status, str(err)) from err
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            raise RetryableWriteError(f"{type(err).__name__}: {err}") from err

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()  # type: ignore[no-untyped-call]
            self._client = None


class V1Writer:
    def __init__(self, config: InfluxConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._database_checked = False

    async def open(self) -> None:
        auth = None
        if self.config.username:
            password = self.config.password.get_secret_value() if self.config.password else ""
            auth = aiohttp.BasicAuth(self.config.username, password)
        self._session = aiohttp.ClientSession(
            auth=auth, timeout=aiohttp.ClientTimeout(total=self.config.timeout)
        )

    async def _create_database(self) -> None:
        assert self._session is not None
        # Idempotent in InfluxDB 1.x; needs admin rights where auth is on, so failure is only reported.
        async with self._session.post(
            f"{self.config.url.rstrip('/')}/query", data={"q": f'CREATE DATABASE "{self.config.database}"'}
        ) as response:
            if response.status >= 300:
                raise RetryableWriteError(
                    f"database {self.config.database} does not exist and cannot be created: HTTP {response.status}"
                )

    async def write(self, lines: list[bytes]) -> None:
        assert self._session is not None
        params = {"db": self.config.database, "precision": "ns"}
        if self.config.retention_policy:
            params["rp"] = self.config.retention_policy
        try:
            async with self._session.post(
                f"{self.config.url.rstrip('/')}/write", params=params, data=b"\n".join(lines)
            ) as response:
                if response.status == 204:
                    return
                body = await response.text()
            if response.status == 404 and "database not found" in body:
                await self._create_database()
                return await self.write(lines)
            raise _classify(response.status, body)
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            raise RetryableWriteError(f"{type(err).__name__}: {err}") from err

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def make_writer(config: InfluxConfig) -> Writer:
    return V1Writer(config) if config.api == "v1" else V2Writer(config)
