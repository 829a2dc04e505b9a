"""Errors a user can act on."""


class UserError(Exception):
    """Bad input from the user (a path, a config field, a size): the CLI prints it as one line, no traceback.

    Say which file or field is wrong and what was expected.
    """
