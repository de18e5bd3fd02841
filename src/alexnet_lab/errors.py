"""The one exception type for mistakes a user can cause and fix, and the two ways a message quotes
what the user gave: `describe` (any value, bounded) and `printable` (a name, its bytes escaped).

The CLI prints a UserError's message without a traceback and exits with status 2.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad flag, missing or corrupt file, bad image).

    The message says what is wrong *and* how to fix it.
    """


def printable(name: str) -> str:
    """A file or class name as text any terminal, page, figure or CSV can hold: bytes that are not UTF-8
    (read from the file system as surrogates, e.g. a folder named b'c\\xfe') shown as \\xNN escapes, control
    characters as \\n, \\t, \\x1b... The name itself is unchanged on disk."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file name decodes to (a YAML or JSON "\\ud800" escape)
        raw = name.encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def nearest(word, choices: list[str], others: str = "Choose one of") -> str:
    """' Did you mean 'X'?' for the choice nearest to an unknown `word`, else ' {others}: a, b, c.'"""
    import difflib

    near = difflib.get_close_matches(word, choices, n=1) if isinstance(word, str) else []
    return f" Did you mean '{near[0]}'?" if near else f" {others}: {', '.join(choices)}."


def describe(value, longest: int = 40) -> str:
    """A short description of a value for a message: never the whole of a large or deeply nested one
    (a config file's alias bomb, a 4,300-digit number, a name with a NUL or undecodable bytes)."""
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):  # repr() of an int of over 4,300 digits raises
        return repr(value) if abs(value) < 10**longest else f"a {value.bit_length()}-bit whole number"
    if isinstance(value, str):
        text = printable(value)  # quoted as is: repr() would double the escapes' backslashes
        return f"'{text}'" if len(text) <= longest else f"'{text[:longest]}'..."
    if isinstance(value, (list, tuple, dict, set)):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):  # a tensor or an array, without importing torch
        return f"a {value.dtype} tensor of shape {tuple(shape)}"
    return f"a {type(value).__name__}"
