"""Ed25519 keys (PyNaCl): generate, save, load, sign, verify; stable key ids.

A private key file is JSON holding the 32-byte seed. It is written with mode 0600 and refused on
load when group or others can read it, like ssh does: a key others can read is not a secret.
"""

from __future__ import annotations

import json
import os
import stat
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import nacl.exceptions
import nacl.signing

from certs.encoding import Domain, digest
from certs.errors import KeyFileError

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
_KEY_FILE_KIND = "quorumserve-ed25519-private-key"


def key_id(public_key: bytes) -> str:
    """A short, stable name for a public key: the first 16 bytes of its domain-separated hash."""
    return "ed25519:" + digest(Domain.KEY_ID, public_key)[:16].hex()


class Signer(Protocol):
    """Signs with one private key. Injected into `consensus/`, which never sees key material."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


class SignatureVerifier(Protocol):
    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool: ...


@dataclass(frozen=True)
class KeyPair:
    """An Ed25519 key pair. `seed` is the secret; never log it."""

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise KeyFileError("an Ed25519 seed is 32 bytes")

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @property
    def _signing_key(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(self.seed)

    @property
    def public_key(self) -> bytes:
        return bytes(self._signing_key.verify_key)

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def signer(self) -> Ed25519Signer:
        return Ed25519Signer(self)

    def __repr__(self) -> str:  # keep the seed out of logs and tracebacks
        return f"KeyPair({self.key_id})"


class Ed25519Signer:
    """The product's signer: real Ed25519 over the canonical bytes."""

    __slots__ = ("_key", "_public_key")

    def __init__(self, key: KeyPair) -> None:
        self._key = key._signing_key
        self._public_key = bytes(self._key.verify_key)

    @property
    def public_key(self) -> bytes:
        return self._public_key

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message).signature


class Ed25519Verifier:
    """Verifies Ed25519 signatures; remembers recent successes.

    The same signed message reaches a replica several times (votes inside proposals, prepared
    certificates inside view changes), so a bounded cache of verified (key, signature, message)
    triples saves work without changing any answer: only successes are cached, keyed by the
    full message.
    """

    def __init__(self, cache_size: int = 65536) -> None:
        self._cache: OrderedDict[tuple[bytes, bytes, bytes], None] = OrderedDict()
        self._cache_size = cache_size
        self._keys: dict[bytes, nacl.signing.VerifyKey] = {}

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
            return False
        cache_key = (public_key, signature, message)
        if cache_key in self._cache:
            return True
        verify_key = self._keys.get(public_key)
        if verify_key is None:
            try:
                verify_key = nacl.signing.VerifyKey(public_key)
            except (nacl.exceptions.CryptoError, ValueError, TypeError):
                return False
            if len(self._keys) < 4096:
                self._keys[public_key] = verify_key
        try:
            verify_key.verify(message, signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError, TypeError):
            return False
        if self._cache_size:
            self._cache[cache_key] = None
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return True


def save_private_key(key: KeyPair, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write a private key file with mode 0600 (created that way, never widened afterwards)."""
    target = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    body = json.dumps(
        {"kind": _KEY_FILE_KIND, "key_id": key.key_id, "public_key": key.public_key.hex(), "seed": key.seed.hex()},
        indent=2,
    )
    try:
        fd = os.open(target, flags, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{target} already exists; refusing to overwrite a key") from exc
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(body + "\n")
    return target


def load_private_key(path: str | os.PathLike[str]) -> KeyPair:
    """Load a private key file; refuse one that group or others may read."""
    source = Path(path)
    try:
        mode = source.stat().st_mode
    except FileNotFoundError as exc:
        raise KeyFileError(f"{source}: no such key file") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{source}: permissions {stat.filemode(mode)} are too open; a private key must be "
            f"readable by its owner only (chmod 600 {source})"
        )
    try:
        data = json.loads(source.read_text())
        if data.get("kind") != _KEY_FILE_KIND:
            raise KeyFileError(f"{source}: not a quorumserve private key file")
        key = KeyPair(bytes.fromhex(data["seed"]))
    except KeyFileError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, RecursionError) as exc:
        raise KeyFileError(f"{source}: malformed key file ({exc})") from exc
    if "public_key" in data and data["public_key"] != key.public_key.hex():
        raise KeyFileError(f"{source}: public key does not match the seed")
    return key


def save_public_key(public_key: bytes, path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    target.write_text(json.dumps({"key_id": key_id(public_key), "public_key": public_key.hex()}, indent=2) + "\n")
    return target
