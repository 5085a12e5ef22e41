from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from common.crypto import SecretBox, hash_client_key, mask_secret, new_client_key, redact
from common.errors import SecretDecryptionError

SECRET = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"


def test_secret_box_round_trip() -> None:
    box = SecretBox(Fernet.generate_key().decode())

    token = box.encrypt(SECRET)

    assert SECRET.encode() not in token
    assert box.decrypt(token, key_label="main") == SECRET


def test_secret_box_wrong_master_key_names_label_only() -> None:
    token = SecretBox(Fernet.generate_key().decode()).encrypt(SECRET)

    with pytest.raises(SecretDecryptionError) as caught:
        SecretBox(Fernet.generate_key().decode()).decrypt(token, key_label="main")

    assert "'main'" in str(caught.value)
    assert "MODCUS_SECRET_KEY" in str(caught.value)
    assert SECRET[:8] not in str(caught.value)


def test_secret_box_reads_old_master_key() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = SecretBox(old).encrypt(SECRET)

    assert SecretBox(new, old).decrypt(token, key_label="main") == SECRET


def test_mask_secret_hides_provider_fragments() -> None:
    masked = mask_secret(SECRET)

    assert masked == "sk-...89"
    assert SECRET[:8] not in masked
    assert SECRET[-4:] not in masked


def test_mask_secret_short_secret_fully_hidden() -> None:
    assert mask_secret("short") == "****"


def test_redact_removes_secret_and_fragments() -> None:
    echoed = f"Incorrect API key provided: {SECRET[:8]}{'*' * 39}{SECRET[-4:]}. Also {SECRET}."

    cleaned = redact(echoed, [SECRET])

    assert SECRET not in cleaned
    assert SECRET[:8] not in cleaned
    assert SECRET[-4:] not in cleaned
    assert cleaned.startswith("Incorrect API key provided: [redacted]")


def test_redact_masked_key_of_unknown_secret() -> None:
    cleaned = redact("Incorrect API key provided: sk-abcde****************wxyz.", [])

    assert "sk-abcde" not in cleaned
    assert "wxyz" not in cleaned


def test_client_key_hash_stable() -> None:
    key = new_client_key()

    assert key.startswith("mk_")
    assert hash_client_key(key) == hash_client_key(key)
    assert key not in hash_client_key(key)
    assert hash_client_key(key) != hash_client_key(new_client_key())
