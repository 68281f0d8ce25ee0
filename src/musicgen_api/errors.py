"""The user-facing failures, one type each. Plain exceptions: the HTTP layer maps them to statuses in one place."""


class InvalidRequest(ValueError):
    """The request cannot be served as asked; the message names the field and what to send instead (HTTP 400).
    `field` is the request field at fault, for clients that mark it (None when the body as a whole is wrong)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PayloadTooLarge(InvalidRequest):
    """The request body is larger than the server accepts (HTTP 413)."""


class UnsupportedMediaType(InvalidRequest):
    """The request body is not declared as JSON (HTTP 415)."""


class Busy(RuntimeError):
    """Another generation holds the one slot (HTTP 503)."""


class NotReady(Busy):
    """What the request asks for is still being prepared (MultiBand Diffusion downloading); try again (HTTP 503)."""


class GenerationFailed(RuntimeError):
    """Generation broke after it started; the message is safe to show the user."""
