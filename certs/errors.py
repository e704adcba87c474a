"""Error types of the certificate layer.

Every decoder of untrusted bytes and every verification either succeeds or raises
`CertificateError` (or a subclass); nothing else escapes. The message says exactly what is
wrong, because an auditor reads it.
"""

from __future__ import annotations


class CertificateError(ValueError):
    """A certificate, piece of evidence, config or encoded structure is invalid."""


class DecodeError(CertificateError):
    """Bytes that do not decode to the expected structure."""


class KeyFileError(CertificateError):
    """A key file is missing, malformed or has unsafe permissions."""


class ConfigError(CertificateError):
    """A group configuration is malformed or inconsistent."""


class PolicyError(CertificateError):
    """Votes handed to an agreement policy break its preconditions."""
