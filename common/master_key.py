"""Rotation of the master key: re-encryption of every stored provider secret.

Provider secrets are Fernet tokens encrypted with MODCUS_SECRET_KEY. To replace
that key:

1. Generate a new key: python -c "from cryptography.fernet import Fernet;
   print(Fernet.generate_key().decode())"
2. Restart every API, worker and scheduler process with the new key as
   MODCUS_SECRET_KEY and the old one in MODCUS_OLD_SECRET_KEYS (comma-separated if
   there are several). They then encrypt with the new key and decrypt with both.
3. Run `modcus keys rotate-master-key` with the same two variables. It re-encrypts
   every secret with the new key in one transaction, so either every secret
   changes or none does.
4. Remove the old key from MODCUS_OLD_SECRET_KEYS, restart the processes again,
   and delete the old key wherever it is kept.

Running the command again is safe: it re-encrypts every secret again.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.crypto import SecretBox
from common.errors import SecretDecryptionError
from common.models import ProviderKey

logger = logging.getLogger(__name__)


def rotate_master_key(session: Session, box: SecretBox) -> int:
    """Re-encrypt every stored secret with the box's master key, commit, and return the count.

    `box` decrypts with its master key or any old key. If a secret decrypts with
    none of them, this raises SecretDecryptionError naming every such key, and
    writes nothing.
    """
    # FOR UPDATE keeps a concurrent delete from making the ORM's UPDATE match no row.
    keys = session.scalars(select(ProviderKey).order_by(ProviderKey.id).with_for_update()).all()

    tokens: dict[int, bytes] = {}
    undecryptable: list[str] = []
    for key in keys:
        try:
            tokens[key.id] = box.rotate(key.secret_encrypted)
        except SecretDecryptionError:
            undecryptable.append(f"key {key.id} {key.label!r}")
    if undecryptable:
        session.rollback()
        secrets = "the secret of" if len(undecryptable) == 1 else "the secrets of"
        raise SecretDecryptionError(
            f"cannot decrypt {secrets} {', '.join(undecryptable)} with MODCUS_SECRET_KEY "
            "or any key in MODCUS_OLD_SECRET_KEYS, so no secret was re-encrypted; add the "
            "master key it was stored with to MODCUS_OLD_SECRET_KEYS, or remove the key "
            "with 'modcus keys remove ID' and add it again"
        )

    for key in keys:
        key.secret_encrypted = tokens[key.id]
    session.commit()
    logger.info("re-encrypted %s provider secrets with the current master key", len(keys))
    return len(keys)
