"""What every stage script shares: a clean one-line error instead of a traceback for user mistakes."""
from __future__ import annotations

import sys
from typing import Callable

from .params import ParamError


class UserError(Exception):
    """A mistake in the user's input (a path, a file, a model); the message says which and what to do."""


def run(main: Callable[[], int | None]) -> None:
    from .data import PrepareError

    try:
        code = main()
    except (ParamError, PrepareError, UserError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
