"""Errors a user can act on."""


class UserError(Exception):
    """Bad input from the user (a path, a config field, a size): the CLI prints it as one line, no traceback.

    Say which file or field is wrong and what was expected.
    """


class LensgenWarning(UserWarning):
    """Something the user should know that does not stop the work (a prompt cut to the encoder's length).

    The CLI prints it as one line, `lensgen: warning: ...`."""
