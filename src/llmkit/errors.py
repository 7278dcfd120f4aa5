"""The one exception type for mistakes a user can make.

The CLI turns a UserError into one line on stderr and exit code 2; the server turns it into a 4xx
body. Anything else is our bug or the machine's trouble (exit 1).
"""


class UserError(Exception):
    """A problem with the user's input: the message says what, where, and how to fix it."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param  # config key path or request field, when there is one

    def __str__(self) -> str:
        return self.message
