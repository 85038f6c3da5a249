"""The drivers' own errors. Library exceptions become one of these with `raise ... from err`."""


class DriverError(Exception):
    """A device could not be read or written."""


class DeviceTimeout(DriverError):
    """The device did not answer in time."""


class DeviceUnreachable(DriverError):
    """No connection to the device (refused, reset, no route)."""


class BadResponse(DriverError):
    """The device answered, but with an exception code or a malformed payload."""


class WriteRejected(DriverError):
    """A write was refused before anything was sent (unknown point, read-only, out of range)."""


class AuthError(DriverError):
    """Credentials or security settings were refused by the device."""
