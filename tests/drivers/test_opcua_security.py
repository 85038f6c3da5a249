"""Basic256Sha256 Sign / SignAndEncrypt with certificates made in a temp dir, trust lists both ways, and
username/password identity, against the asyncua simulator."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from dcim.core.samples import Quality
from dcim.drivers.base import DriverContext
from dcim.drivers.errors import AuthError
from dcim.drivers.opcua.driver import OpcUaDriver, make_driver
from dcim.drivers.opcua.security import UntrustedCertificate
from dcim.drivers.profiles import load_profile
from dcim.simulators.opcua import ServerSecurity
from dcim.simulators.plant import Plant
from tests.helpers import free_port
from tests.opcua.fixtures import CLIENT_URI, Pki, Running, chiller, hall, pki, simulator

__all__ = ["pki"]  # a fixture this module uses

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROFILE = load_profile("generic-chiller")
USER, PASSWORD = "operator", "chilled-water-42"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def secure_sim(pki: Pki) -> AsyncIterator[Running]:
    config = hall(free_port())
    security = ServerSecurity(pki.server_cert, pki.server_key, trust_list=pki.server_trust, users={USER: PASSWORD},
                              allow_none=False)
    async with simulator(Plant(config, frozen=True), chiller(config), security) as running:
        yield running


@pytest.fixture
def password_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DCIM_TEST_OPCUA_PASSWORD", PASSWORD)
    monkeypatch.setenv("DCIM_TEST_OPCUA_WRONG", "guess")
    return "env:DCIM_TEST_OPCUA_PASSWORD"


def secure_driver(sim: Running, pki: Pki, mode: str = "SignAndEncrypt", **settings: object) -> OpcUaDriver:
    options: dict[str, object] = {
        "security_policy": "Basic256Sha256", "security_mode": mode,
        "certificate": str(pki.client_cert), "private_key": str(pki.client_key),
        "trust_list": str(pki.client_trust), "username": USER, "password": "env:DCIM_TEST_OPCUA_PASSWORD",
        **settings,
    }
    config = hall(int(sim.device.endpoint.rsplit(":", 1)[1]), **options)
    driver = make_driver(chiller(config), PROFILE, DriverContext())
    return driver


@pytest.mark.parametrize("mode", ["SignAndEncrypt", "Sign"])
async def test_basic256sha256_with_trusted_certificates_connects_and_reads(
    secure_sim: Running, pki: Pki, password_env: str, mode: str
) -> None:
    driver = secure_driver(secure_sim, pki, mode)
    try:
        samples = await driver.read()
        assert samples and all(s.quality is Quality.GOOD for s in samples)
        await driver.write("setpoint_c", 17.0)
        assert secure_sim.plant.chillers[secure_sim.device.id].setpoint_c == 17.0
    finally:
        secure_sim.plant.chillers[secure_sim.device.id].setpoint_c = 18.0
        await driver.close()


async def test_the_server_refuses_an_untrusted_client_certificate(
    secure_sim: Running, pki: Pki, password_env: str
) -> None:
    driver = secure_driver(secure_sim, pki, certificate=str(pki.rogue_cert), private_key=str(pki.rogue_key))
    with pytest.raises(AuthError, match="BadCertificateUntrusted: the server does not trust our client certificate"):
        await driver.connect()
    await driver.close()


async def test_the_client_refuses_a_server_not_in_its_trust_list(
    secure_sim: Running, pki: Pki, password_env: str, tmp_path: Path
) -> None:
    trust = tmp_path / "trusted"
    trust.mkdir()
    shutil.copy(pki.rogue_server_cert, trust / "someone-else.der")
    driver = secure_driver(secure_sim, pki, trust_list=str(trust))
    with pytest.raises(UntrustedCertificate, match=r"CN=simulated chiller.*is not in the trust list"):
        await driver.connect()
    await driver.close()


async def test_a_wrong_password_is_refused(secure_sim: Running, pki: Pki, password_env: str) -> None:
    driver = secure_driver(secure_sim, pki, password="env:DCIM_TEST_OPCUA_WRONG")
    with pytest.raises(AuthError, match=r"BadIdentityTokenRejected|BadUserAccessDenied"):
        await driver.connect()
    await driver.close()


async def test_a_server_without_the_policy_says_what_it_offers(
    secure_sim: Running, pki: Pki, password_env: str
) -> None:
    config = hall(int(secure_sim.device.endpoint.rsplit(":", 1)[1]), username=USER,
                  password="env:DCIM_TEST_OPCUA_PASSWORD")
    driver = make_driver(chiller(config), PROFILE, DriverContext())
    with pytest.raises(AuthError, match=r"offers no None/None endpoint \(it offers Basic256Sha256/Sign, "
                                        r"Basic256Sha256/SignAndEncrypt\)"):
        await driver.connect()
    await driver.close()


async def test_missing_certificate_files_are_a_clear_error(
    secure_sim: Running, pki: Pki, password_env: str, tmp_path: Path
) -> None:
    driver = secure_driver(secure_sim, pki, certificate=str(tmp_path / "nope.der"))
    with pytest.raises(AuthError, match=r"nope.der does not exist \(make one with `dcim opcua-cert`\)"):
        await driver.connect()
    driver = secure_driver(secure_sim, pki, application_uri="urn:somebody:else")
    with pytest.raises(AuthError, match=f"differs from the certificate's '{CLIENT_URI}'"):
        await driver.connect()
