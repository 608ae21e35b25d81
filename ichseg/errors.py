"""The one exception type a user sees: a single line that names the file or key."""


class IchsegError(Exception):
    """An error the user can act on; its message is one line naming the file, patient or key."""
