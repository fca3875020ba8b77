"""The one exception type that reaches the user as a one-line message instead of a traceback."""


class VitpipeError(Exception):
    """Bad input or an unreachable source.

    The message is one line that names the file, key or source concerned and how to fix it.
    Entry points log it and exit with status 2; any other exception is a bug in vitpipe.
    """
