"""Exceptions whose message is a complete one-line explanation for the user."""

import re


class JDNetError(Exception):
    """A user-facing failure: the CLI prints ``str(err)`` on one line, never a traceback."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when empty), cut to ``limit`` characters,
    without Python object reprs ('cannot identify image file <_io.BytesIO object at 0x7f...>')."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return re.sub(r"\s*<[^<>]* object at 0x[0-9a-fA-F]+>", "", line)[:limit] or type(err).__name__


def failure_reason(check) -> str | None:
    """The message of the JDNetError that ``check()`` raises, or None when it returns."""
    try:
        check()
    except JDNetError as err:
        return str(err)
    return None
