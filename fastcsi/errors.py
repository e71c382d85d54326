"""The one exception type for mistakes a user can make (bad path, bad file, bad option).

The CLI prints such an error as one line on stderr and exits with status 2; anything else is a bug
and keeps its traceback.
"""


class FastCSIError(Exception):
    """A user-caused error: the message is a complete sentence naming the file (and index)."""


class Interrupted(BaseException):
    """SIGINT under the ``fastcsi`` command. Not a KeyboardInterrupt, so that click does not turn it
    into ``Aborted!`` / status 1; like one it is no ``Exception``: cleanup runs, nothing swallows it."""
