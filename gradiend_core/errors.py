"""User-facing errors: one line that names the file or param and says how to fix it."""


class GradiendError(Exception):
    """An error caused by the user's input (params, data, model path), not by a bug.

    The message is a single line: what is wrong, where (file or ``section.key``), and the fix.
    Stage scripts print it without a traceback and exit with status 2.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))
