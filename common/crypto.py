"""Encryption of provider secrets, hashing of client keys, and redaction."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from common.errors import SecretDecryptionError
from common.settings import Settings

CLIENT_KEY_PREFIX = "mk_"

# Secrets shorter than this are masked completely.
_MIN_MASKABLE_CHARS = 12


def _fernet_key(master_key: str) -> bytes:
    """Return `master_key` if it is a Fernet key, else a Fernet key derived from it.

    Settings accept a non-Fernet master key only with MODCUS_ENV=development.
    """
    try:
        Fernet(master_key.encode())
    except ValueError:
        return base64.urlsafe_b64encode(hashlib.sha256(master_key.encode()).digest())
    return master_key.encode()


class SecretBox:
    """Encrypts and decrypts provider secrets with the master key (Fernet).

    Extra keys decrypt only; they let secrets written under a previous master
    key be read while they are re-encrypted.
    """

    def __init__(self, master_key: str, *old_master_keys: str) -> None:
        keys = (master_key, *old_master_keys)
        self._fernet = MultiFernet([Fernet(_fernet_key(key)) for key in keys])

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        """Encrypt with MODCUS_SECRET_KEY and also decrypt with MODCUS_OLD_SECRET_KEYS.

        Reading with the old keys too keeps every process working while an operator
        re-encrypts the stored secrets under a new master key.
        """
        return cls(settings.secret_key, *settings.old_secret_key_list)

    def encrypt(self, secret: str) -> bytes:
        return self._fernet.encrypt(secret.encode())

    def decrypt(self, token: bytes, *, key_label: str) -> str:
        try:
            return self._fernet.decrypt(token).decode()
        except InvalidToken:
            raise SecretDecryptionError(
                f"the secret of key {key_label!r} cannot be decrypted with MODCUS_SECRET_KEY; "
                "set the master key it was stored with, or add the key again"
            ) from None

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt `token` with the master key; any of the box's keys may decrypt it."""
        try:
            return self._fernet.rotate(token)
        except InvalidToken:
            raise SecretDecryptionError(
                "the secret cannot be decrypted with MODCUS_SECRET_KEY "
                "or any key in MODCUS_OLD_SECRET_KEYS"
            ) from None


def mask_secret(secret: str) -> str:
    """Return a form of `secret` safe to show: its first 3 and last 2 characters at most.

    Providers echo the first 8 and last 4 characters of a key in their errors, so
    the masked form shows less than either, and no fragment can be matched to a log.
    """
    if len(secret) < _MIN_MASKABLE_CHARS:
        return "****"
    return f"{secret[:3]}...{secret[-2:]}"


def new_client_key() -> str:
    """Generate a client API key with 256 bits of randomness."""
    return CLIENT_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_client_key(client_key: str) -> str:
    """Hash a client key for storage and lookup.

    Client keys are random 256-bit tokens, so one round of SHA-256 is enough;
    a slow password hash would only add latency to every request.
    """
    return hashlib.sha256(client_key.encode()).hexdigest()


# A run of at least 4 '*' with the visible ends providers echo around it, such as
# OpenAI's "sk-abcde***...***wxyz".
_MASKED_FRAGMENT = re.compile(r"\S*\*{4,}\S*")


def redact(text: str, secrets_to_hide: list[str]) -> str:
    """Remove every known secret, its visible fragments and provider-masked keys from `text`."""
    for secret in secrets_to_hide:
        if not secret:
            continue
        text = text.replace(secret, "[redacted]")
        if len(secret) >= _MIN_MASKABLE_CHARS:
            for fragment in (secret[:8], secret[-4:]):
                text = text.replace(fragment, "[redacted]")
    return _MASKED_FRAGMENT.sub("[redacted]", text)
