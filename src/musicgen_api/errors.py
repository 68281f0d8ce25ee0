"""The user-facing failures, one type each. Plain exceptions: the HTTP layer maps them to statuses in one place."""


class InvalidRequest(ValueError):
    """The request cannot be served as asked; the message names the field and what to send instead (HTTP 400)."""


class Busy(RuntimeError):
    """Another generation holds the one slot (HTTP 503)."""


class GenerationFailed(RuntimeError):
    """Generation broke after it started; the message is safe to show the user."""
