"""The one exception type a user sees: a single line that names the file or key."""


class IchsegError(Exception):
    """An error the user can act on; its message is one line naming the file, patient or key."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none: the detail an
    IchsegError quotes from the library error behind it."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
