"""Ed25519 key files: private keys stay private, key ids are stable."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certs.errors import CertificateError, KeyFileError
from certs.keys import Ed25519Verifier, KeyPair, key_id, load_private_key, save_private_key, save_public_key

FIXED = KeyPair(bytes(range(32)))


def test_key_ids_are_stable() -> None:
    # pinned: configs and logs refer to keys by id, so the id of a key must never change
    assert FIXED.public_key.hex() == "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
    assert FIXED.key_id == "ed25519:08db63dac940a1a3037a66bd66d2ab90"
    assert key_id(FIXED.public_key) == FIXED.key_id


def test_private_key_files_are_written_owner_only_and_load_back(tmp_path: Path) -> None:
    path = save_private_key(FIXED, tmp_path / "replica.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_private_key(path).seed == FIXED.seed


def test_saving_never_overwrites_a_key(tmp_path: Path) -> None:
    path = save_private_key(FIXED, tmp_path / "replica.key")
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        save_private_key(KeyPair.generate(), path)
    assert load_private_key(path).seed == FIXED.seed


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o070])
def test_a_key_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = save_private_key(FIXED, tmp_path / "replica.key")
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="too open"):
        load_private_key(path)


def test_a_missing_key_or_a_key_that_contradicts_itself_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no such key file"):
        load_private_key(tmp_path / "absent.key")
    path = tmp_path / "odd.key"
    path.write_text(
        '{"kind": "quorumserve-ed25519-private-key", "seed": "%s", "public_key": "%s"}'
        % (FIXED.seed.hex(), KeyPair(bytes(32)).public_key.hex())
    )
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="does not match"):
        load_private_key(path)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_random_key_file_contents_raise_only_key_file_errors(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.key"
        path.write_bytes(data)
        os.chmod(path, 0o600)
        try:
            load_private_key(path)
        except CertificateError:
            pass


def test_deeply_nested_json_is_a_key_file_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.key"
    path.write_text("[" * 100_000 + "]" * 100_000)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError):
        load_private_key(path)


def test_public_key_files_name_the_key(tmp_path: Path) -> None:
    text = save_public_key(FIXED.public_key, tmp_path / "replica.pub").read_text()
    assert FIXED.key_id in text and FIXED.public_key.hex() in text


def test_the_seed_stays_out_of_reprs() -> None:
    assert FIXED.seed.hex() not in repr(FIXED)
    assert repr(FIXED) == f"KeyPair({FIXED.key_id})"


def test_signatures_verify_only_for_their_message_and_key() -> None:
    verifier = Ed25519Verifier()
    signature = FIXED.signer().sign(b"hello")
    assert verifier.verify(FIXED.public_key, b"hello", signature)
    assert verifier.verify(FIXED.public_key, b"hello", signature)  # cached answer is still right
    assert not verifier.verify(FIXED.public_key, b"hellO", signature)
    assert not verifier.verify(KeyPair(bytes(32)).public_key, b"hello", signature)
    assert not verifier.verify(FIXED.public_key, b"hello", signature[:-1])
    assert not verifier.verify(b"\x00" * 31, b"hello", signature)
