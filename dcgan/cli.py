"""What every stage script shares: a clean one-line error instead of a traceback for user mistakes."""
from __future__ import annotations

import sys
from typing import Callable

from .errors import UserError

__all__ = ["UserError", "run"]


def run(main: Callable[[], int | None]) -> None:
    """Call main(); a UserError (ParamError, PrepareError, ...) or a file the user named that cannot be
    read or written becomes `error: <one line>` on stderr and exit code 2."""
    try:
        code = main()
    except (UserError, FileNotFoundError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)  # one line, whatever the message holds
        sys.exit(2)
    except (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as e:
        # a path the user gave (an --out folder, the project folder) that we may not write or read
        print(f"error: {e.strerror}: '{e.filename}'" + (f" -> '{e.filename2}'" if e.filename2 else ""),
              file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
