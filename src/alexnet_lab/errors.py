"""The one exception type for mistakes a user can cause and fix.

The CLI prints its message without a traceback and exits with status 2.
"""


class UserError(Exception):
    """A problem the user can fix (bad flag, missing or corrupt file, bad image).

    The message says what is wrong *and* how to fix it.
    """
