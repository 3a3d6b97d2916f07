"""Errors that reach the user as one line."""


class UserError(Exception):
    """A problem with the user's input or files; the CLI prints it as one line and exits with code 2."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class SettingError(UserError):
    """A user error caused by ``settings``, named as the library's parameters and fields are; the command line
    adds the options that give them."""

    def __init__(self, message: str, *settings: str) -> None:
        super().__init__(message)
        self.settings = settings
