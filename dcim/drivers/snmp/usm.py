"""SNMPv3 USM protocol names of the configuration -> pysnmp's protocol identifiers."""

from __future__ import annotations

from pysnmp.entity import config as snmp_config

AUTH: dict[str, tuple[int, ...]] = {
    "none": snmp_config.USM_AUTH_NONE,
    "md5": snmp_config.USM_AUTH_HMAC96_MD5,
    "sha": snmp_config.USM_AUTH_HMAC96_SHA,
    "sha224": snmp_config.USM_AUTH_HMAC128_SHA224,
    "sha256": snmp_config.USM_AUTH_HMAC192_SHA256,
    "sha384": snmp_config.USM_AUTH_HMAC256_SHA384,
    "sha512": snmp_config.USM_AUTH_HMAC384_SHA512,
}

# AES-192/256 key extension as most PDU vendors (and net-snmp's AES192C/AES256C) do it ("Reeder"/Cisco);
# the Blumenthal draft's variant is rarer on PDUs.
PRIV: dict[str, tuple[int, ...]] = {
    "none": snmp_config.USM_PRIV_NONE,
    "des": snmp_config.USM_PRIV_CBC56_DES,
    "aes128": snmp_config.USM_PRIV_CFB128_AES,
    "aes192": snmp_config.USM_PRIV_CFB192_AES,
    "aes256": snmp_config.USM_PRIV_CFB256_AES,
}


def auth_protocol(name: str) -> tuple[int, ...]:
    return AUTH[name]


def priv_protocol(name: str) -> tuple[int, ...]:
    return PRIV[name]
