"""Exceptions the app raises on purpose; everything else is a bug or a transient failure."""


class VisualSearchError(Exception):
    """Base class of this app's errors."""


class UnusableImage(VisualSearchError, ValueError):
    """An image that cannot be used: empty, too large, corrupt, or of a format not allowed.

    Permanent: retrying the same bytes gives the same answer, so tasks record it instead.
    ``code`` says which (for API clients): empty, too_large, not_found, unreadable,
    not_an_image, corrupt, decompression_bomb or bad_box.
    """

    def __init__(self, message: str, code: str = "unusable_image") -> None:
        super().__init__(message)
        self.code = code


class ProductNotFound(VisualSearchError, LookupError):
    """No product with that primary key."""


class EncoderUnavailable(VisualSearchError, RuntimeError):
    """The configured encoder cannot be imported or loaded."""
