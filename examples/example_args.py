"""The command line every example shares: ``python examples/NAME.py [DIR [io_method]]``.

Without ``DIR`` the example runs in a new temporary directory, removed when it ends, so
each example runs as it is; with ``DIR`` the database is kept there for a look afterwards
(``slonik stats DIR``, ``slonik waldump DIR``). ``-h``/``--help`` or too many arguments
print the usage (the example's docstring) instead.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable

IO_METHODS = ("auto", "io_uring", "worker", "sync")


def run(main: Callable[[str, str], int], doc: str | None, argv: list[str] | None = None) -> int:
    """Call ``main(path, io_method)`` with the arguments of ``argv`` (default: sys.argv[1:]);
    returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    usage = (doc or "").strip() + "\n\nusage: [DIR [io_method]]  (io_method: " + \
        " | ".join(IO_METHODS) + "; without DIR a temporary directory is used and removed)"
    if len(args) > 2 or any(a in ("-h", "--help") for a in args):
        print(usage, file=sys.stdout if args and args[0] in ("-h", "--help") else sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    io_method = args[1] if len(args) == 2 else "auto"
    if io_method not in IO_METHODS:
        print(f"io_method must be one of {', '.join(IO_METHODS)}, got {io_method!r}\n\n{usage}",
              file=sys.stderr)
        return 2
    if args:
        return main(args[0], io_method)
    with tempfile.TemporaryDirectory(prefix="slonik-example-") as tmp:
        print(f"(no DIR given: using the temporary directory {tmp}, removed at the end)")
        return main(f"{tmp}/db", io_method)
