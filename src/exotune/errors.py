"""One error hierarchy; each error is also the builtin it replaces."""

from __future__ import annotations


class ExotuneError(Exception):
    """Base of every error exotune raises on purpose."""


class ConfigError(ExotuneError, ValueError):
    """A configuration value is not what it must be."""


class DataError(ExotuneError, ValueError):
    """A data file or dataset is malformed; the message names file, line and column."""


class DatasetNotFoundError(ExotuneError, FileNotFoundError):
    """A known dataset is not on disk; the message says where to put it."""


class BackboneNotFoundError(ExotuneError, OSError):
    """A backbone could not be loaded from a local path, the cache or the package."""


class AccessError(ExotuneError, PermissionError):
    """An operation is not allowed at the box's access level."""


class BoxLimitError(ExotuneError, ValueError):
    """A request exceeds the limits the box's owner set (batch, sequence length)."""


class SpecMismatchError(ExotuneError, ValueError):
    """An adapter was trained against a box whose spec differs from the given one."""


class ArtifactError(ExotuneError, ValueError):
    """An adapter folder or checkpoint is missing, corrupted or from another kind of model."""


class NotFittedError(ExotuneError, AttributeError):
    """A model was used before it was trained or loaded."""


class MissingDependencyError(ExotuneError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class WireError(ExotuneError, ValueError):
    """Bytes on the wire are not a valid message: truncated, malformed, too large, wrong dtype."""


class RemoteError(ExotuneError, ConnectionError):
    """A served box could not be reached, or answered with a server error or a refusal."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class AuthenticationError(RemoteError, PermissionError):
    """The served box rejected the bearer token (HTTP 401)."""


class RequestRejectedError(RemoteError, ValueError):
    """The served box refused a request as invalid (HTTP 4xx); the message is the server's."""


class RateLimitError(RemoteError):
    """The served box refused a call: too many requests, or the gradient budget is spent (HTTP 429)."""


class HandleExpiredError(RemoteError):
    """A forward handle is unknown, expired or already used; replay the forward."""


class BlackBoxError(ExotuneError, RuntimeError):
    """A black-box call failed for good (after retries, or with an error that retrying cannot fix)."""


class TransientBlackBoxError(BlackBoxError):
    """A black-box call failed in a way worth retrying: rate limit, server error, timeout, lost connection."""
