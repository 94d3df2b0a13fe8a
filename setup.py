"""Build glue: compiles the io_uring cffi binding when liburing is present.

Everything else about the package lives in pyproject.toml. The binding is optional: without
liburing the install succeeds and ``aio.io_uring_available()`` says why io_uring is off.
``SLONIK_REQUIRE_URING=1`` turns a missing liburing into a build failure, so CI cannot go
green without io_uring.
"""

import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "aio"))
from _uring_build import liburing_missing_reason  # noqa: E402

reason = liburing_missing_reason()
if reason is None:
    setup(cffi_modules=["aio/_uring_build.py:ffibuilder"])
elif os.environ.get("SLONIK_REQUIRE_URING") == "1":
    raise SystemExit(f"SLONIK_REQUIRE_URING=1 but the io_uring binding cannot be built: {reason}")
else:
    print(f"warning: building without io_uring: {reason}", file=sys.stderr)
    setup()
