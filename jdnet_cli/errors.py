"""Exceptions whose message is a complete one-line explanation for the user."""


class JDNetError(Exception):
    """A user-facing failure: the CLI prints ``str(err)`` on one line, never a traceback."""
