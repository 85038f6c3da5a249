# ruff: noqa: F811 - pytest fixtures imported from tests/drivers/test_snmp_support.py
"""The v1/v2c BER codec of drivers/snmp/fast.py: encodings checked against pyasn1 (pysnmp's codec), and the
session against the pysnmp agent of the simulator, including SNMPv1 and bad datagrams."""

from __future__ import annotations

import asyncio

import pytest
from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import api

from dcim.app.config import Config, parse_config
from dcim.drivers.base import DriverContext
from dcim.drivers.errors import BadResponse, DeviceTimeout
from dcim.drivers.snmp import fast
from dcim.simulators.plant import Plant
from dcim.simulators.snmp import SnmpSimulator
from tests.drivers.test_snmp_support import (  # noqa: F401 - fixtures by name
    by_series,
    context,
    hall,
    open_driver,
    pdu,
    pdu_config,
    plant,
    simulator,
    snmp_device,
    snmp_env,
)
from tests.helpers import hand_over

V2C = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]


@pytest.mark.parametrize("oid", [
    (1, 3), (1, 3, 6, 1, 4, 1, 318, 1, 1, 26, 9, 2, 3, 1, 5, 48), (1, 3, 6, 1, 4, 1, 13742, 6, 5, 4, 3, 1, 4, 1, 7, 1),
    (2, 999, 4294967295, 127, 128, 16383, 16384), (0, 39, 0),
])
def test_oid_encoding_matches_pyasn1(oid: tuple[int, ...]) -> None:
    assert fast.encode_oid(oid) == encoder.encode(V2C.ObjectIdentifier(oid))
    body = fast.encode_oid(oid)[2:]
    assert fast.decode_oid(body) == oid


def test_request_matches_pysnmp_and_response_decodes() -> None:
    codec = fast.Codec()
    oids = [(1, 3, 6, 1, 4, 1, 318, 1, 1, 26, 4, 3, 1, 5, 1), (1, 3, 6, 1, 2, 1, 1, 3, 0)]
    message = codec.request(1, b"public", fast.GETBULK, 12345, 0, 25, [(o, b"\x05\x00") for o in oids])
    decoded, rest = decoder.decode(message, asn1Spec=V2C.Message())
    assert not rest
    pdu = V2C.apiMessage.get_pdu(decoded)
    assert int(V2C.apiPDU.get_request_id(pdu)) == 12345
    assert [tuple(name) for name, _ in V2C.apiPDU.get_varbinds(pdu)] == oids
    # A response as pysnmp builds it: every value type the driver may meet, long-form lengths included.
    response = V2C.GetResponsePDU()
    V2C.apiPDU.set_defaults(response)
    V2C.apiPDU.set_request_id(response, 77)
    values = [V2C.Integer(-1), V2C.Integer(2**31 - 1), V2C.Gauge32(2**32 - 1), V2C.Counter32(0),
              V2C.OctetString(b"x" * 300), V2C.ObjectIdentifier((1, 3, 6, 1)), V2C.TimeTicks(12)]
    V2C.apiPDU.set_varbinds(response, [((1, 3, 6, 1, 9, n), v) for n, v in enumerate(values)])
    envelope = V2C.Message()
    V2C.apiMessage.set_defaults(envelope)
    V2C.apiMessage.set_community(envelope, "public")
    V2C.apiMessage.set_pdu(envelope, response)
    request_id, status, index, var_binds = codec.response(encoder.encode(envelope))
    assert (request_id, status, index) == (77, 0, 0)
    assert [v for _, v in var_binds] == [-1, 2**31 - 1, 2**32 - 1, 0, b"x" * 300, (1, 3, 6, 1), 12]
    assert [o for o, _ in var_binds] == [(1, 3, 6, 1, 9, n) for n in range(len(values))]


def test_unsigned_and_negative_integers() -> None:
    assert fast._unsigned(0x42, 2**32 - 1) == encoder.encode(V2C.Gauge32(2**32 - 1))
    assert fast._integer(0x02, -129) == encoder.encode(V2C.Integer(-129))
    assert fast._integer(0x02, 128) == encoder.encode(V2C.Integer(128))


async def test_snmpv1_reads_everything(snmp_env: None, context: DriverContext) -> None:
    config = parse_config(hall([pdu("v1-apc", "apc-rpdu2", version="1", deadline="10s"),
                                pdu("v2-rpx", "raritan-px")]))
    plant = hand_over(Plant(config, frozen=True), config.devices)
    async with SnmpSimulator(plant, config.devices, refresh=0):  # type: ignore[arg-type]
        v1 = await open_driver(config, "v1-apc", context)
        v2 = await open_driver(config, "v2-rpx", context)
        try:
            one, two = await asyncio.gather(v1.read(), v2.read())
            await v1.write("outlet_command:5", "off")
            after = by_series(await v1.read())
        finally:
            await v1.close()
            await v2.close()
    # Raritan: 24 outlets x 5 points (power factor included), the neutral of its wye inlet, the rest.
    assert len(one) == 125 and len(two) == 146
    assert after[("pdu_outlet", "state", (("outlet", "5"),))] == "off"


async def test_stray_and_malformed_datagrams(
    pdu_config: Config, simulator: SnmpSimulator, context: DriverContext
) -> None:
    driver = await open_driver(pdu_config, "apc-a01", context)
    assert await driver.read()
    session = driver.session
    assert isinstance(session, fast.FastSession)
    endpoint = context.shared["snmp_fast_endpoint"]
    assert endpoint.transport is not None
    port = endpoint.transport.get_extra_info("sockname")[1]
    # Garbage from anywhere is dropped; the next poll is unaffected.
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=("127.0.0.1", port))
    transport.sendto(b"\x30\x03\x02\x01")
    transport.sendto(b"not snmp at all")
    transport.close()
    assert await driver.read()
    # A response that is not a Response-PDU is a BadResponse, not a crash.
    with pytest.raises(BadResponse, match="malformed"):
        session._decode(endpoint, fast.Codec().request(1, b"x", fast.GET, 1, 0, 0, []), 1, [])
    await driver.close()


async def test_timeout_names_the_device(snmp_env: None, context: DriverContext) -> None:
    config = parse_config(hall([pdu("silent", "apc-rpdu2", timeout="100ms", retries=2), pdu("other", "apc-rpdu2")]))
    driver = await open_driver(config, "silent", context)  # nothing listens on its port
    with pytest.raises(DeviceTimeout, match=r"silent .*3 tries of 0.1s"):
        await driver.read()
    await driver.close()
    assert snmp_device(config, "silent").retries == 2


async def test_fast_and_pysnmp_sessions_read_the_same(
    pdu_config: Config, simulator: SnmpSimulator, context: DriverContext
) -> None:
    from dcim.drivers.snmp.session import Session

    for device_id in ("apc-a01", "rpx-a01"):
        fast_driver = await open_driver(pdu_config, device_id, context)
        slow_driver = await open_driver(pdu_config, device_id, context)
        slow_driver.session = Session(snmp_device(pdu_config, device_id), context)
        try:
            quick, slow = await asyncio.gather(fast_driver.read(), slow_driver.read())
            await slow_driver.write("outlet_command:3", "off")
            assert by_series(await fast_driver.read())[("pdu_outlet", "state", (("outlet", "3"),))] == "off"
        finally:
            await fast_driver.close()
            await slow_driver.close()
        assert by_series(quick) == by_series(slow)


class _Ipv6Agent(asyncio.DatagramProtocol):
    """Answers any GET with INTEGER 42 per varbind: enough to see the IPv6 socket work."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request, _ = decoder.decode(data, asn1Spec=V2C.Message())
        pdu = V2C.apiMessage.get_pdu(request)
        response = V2C.apiPDU.get_response(pdu)
        V2C.apiPDU.set_varbinds(response, [(name, V2C.Integer(42)) for name, _ in V2C.apiPDU.get_varbinds(pdu)])
        V2C.apiMessage.set_pdu(request, response)
        self.transport.sendto(encoder.encode(request), addr)  # type: ignore[attr-defined]


async def test_ipv6_and_host_names(snmp_env: None, context: DriverContext) -> None:
    import socket

    loop = asyncio.get_running_loop()
    try:
        transport, _ = await loop.create_datagram_endpoint(_Ipv6Agent, local_addr=("::1", 0),
                                                           family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = transport.get_extra_info("sockname")[1]
    config = parse_config(hall([pdu("v6", "apc-rpdu2", host="::1", port=port),
                                pdu("byname", "apc-rpdu2", host="localhost")]))
    v6 = fast.FastSession(snmp_device(config, "v6"), context)
    try:
        assert await v6.get([(1, 3, 6, 1, 2, 1, 1, 3, 0)]) == [((1, 3, 6, 1, 2, 1, 1, 3, 0), 42)]
    finally:
        v6.close()
        transport.close()
    byname = fast.FastSession(snmp_device(config, "byname"), context)
    await byname._open()
    assert byname.address[0] == "127.0.0.1"
    byname.close()
    assert not [k for k, v in context.shared.items() if isinstance(v, fast._Endpoint)]
