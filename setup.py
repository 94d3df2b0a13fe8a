"""Build glue: compiles the optional cffi modules.

Everything else about the package lives in pyproject.toml.

- ``slonik.aio._uring``, the io_uring binding, when liburing is present. Without it the install
  succeeds and ``slonik.aio.io_uring_available()`` says why io_uring is off;
  ``SLONIK_REQUIRE_URING=1`` turns a missing liburing into a build failure, so CI cannot go
  green without io_uring.
- ``slonik.storage._pagecheck``, page verification of a whole read in C, when a C compiler works.
  Built as an optional extension: if it fails, ``slonik.storage.page`` uses its pure-Python path.
- ``slonik.aio._osio``, a batch of I/Os in one C call for the worker method, on the same
  condition and as optional: without it a worker runs each I/O through ``aio/osfile.py``.
"""

import os
import sys

from setuptools import setup

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "aio"))
sys.path.insert(0, os.path.join(here, "storage"))
from _pagecheck_build import c_compiler_missing_reason  # noqa: E402
from _uring_build import liburing_missing_reason  # noqa: E402

modules = []
reason = liburing_missing_reason()
if reason is None:
    modules.append("aio/_uring_build.py:ffibuilder")
elif os.environ.get("SLONIK_REQUIRE_URING") == "1":
    raise SystemExit(f"SLONIK_REQUIRE_URING=1 but the io_uring binding cannot be built: {reason}")
else:
    print(f"warning: building without io_uring: {reason}", file=sys.stderr)
pagecheck_reason = c_compiler_missing_reason()
if pagecheck_reason is None:
    modules.append("storage/_pagecheck_build.py:ffibuilder")
    modules.append("storage/_pagecheck_build.py:hot_ffibuilder")
    modules.append("aio/_osio_build.py:ffibuilder")
else:
    print(f"warning: building without the C page verifier: {pagecheck_reason}", file=sys.stderr)
setup(cffi_modules=modules)
