"""The exceptions of Modcus. Every one derives from ModcusError."""

from __future__ import annotations

from datetime import datetime


class ModcusError(Exception):
    """Base class of every error that Modcus raises on purpose."""


class ConfigError(ModcusError):
    """Raised when a setting is missing or malformed at start-up."""


class EventLoopMisuseError(ModcusError):
    """Raised when a sync entry point is called on a thread whose event loop is running."""


class NotFoundError(ModcusError):
    """Raised when a requested row does not exist."""


class CompanyNotFoundError(NotFoundError):
    """Raised when no company is stored for a ticker."""

    def __init__(self, ticker: str) -> None:
        super().__init__(
            f"no company with ticker {ticker!r} is loaded; load its documents with "
            "'modcus companies load PATH' or ask an operator to add it"
        )
        self.ticker = ticker


class InvalidInputError(ModcusError):
    """Raised when a value given by a user or an operator is not acceptable."""


class SecretDecryptionError(ModcusError):
    """Raised when a stored secret cannot be decrypted with the configured master key."""


class ProviderError(ModcusError):
    """Raised when an LLM provider call fails in a way no other key can fix."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class NoUsableKeyError(ModcusError):
    """Raised when no provider key can serve a call right now.

    `retry_at` is the earliest time a cooling key frees up, or None when no key
    will free up by itself.
    """

    def __init__(self, message: str, *, retry_at: datetime | None) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class DependencyUnavailableError(ModcusError):
    """Raised when PostgreSQL or Redis cannot be reached while a job runs."""
