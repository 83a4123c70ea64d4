"""The one error type a user can fix: stage scripts print its message on one line and exit 2 (see cli.run)."""


class UserError(Exception):
    """A mistake in the user's input (a param, a path, a file, a model); the message names it and says what to do."""
