"""The one exception type for bad data, so callers can catch it and users see a message
that names the file, column and rows involved."""


class DataError(ValueError):
    """Bad input data or an unreadable source; the message names what and where."""
