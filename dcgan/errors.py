"""The one error type a user can fix: stage scripts print its message on one line and exit 2 (see cli.run)."""


class UserError(Exception):
    """A mistake in the user's input (a param, a path, a file, a model); the message names it and says what to do."""


def brief(e: BaseException, limit: int = 160) -> str:
    """'TypeName: first sentence' of an exception from a library, for a one-line message."""
    text = " ".join(str(e).split())
    first = text.split(". ")[0][:limit]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
