"""Shared fixtures: every I/O-path test runs against sync, worker and io_uring."""

import os

import pytest
from slonik.aio.core import Aio, make_method
from slonik.aio.method_io_uring import io_uring_available

from tests.support.method_faulty import FaultInjectingMethod

METHODS = ["sync", "worker", "io_uring"]


def require_method(name: str) -> None:
    if name == "io_uring":
        ok, reason = io_uring_available()
        if not ok:
            if os.environ.get("SLONIK_REQUIRE_URING") == "1":
                pytest.fail(f"io_uring is required here but unavailable: {reason}")
            pytest.skip(f"io_uring unavailable: {reason}")


@pytest.fixture(params=METHODS)
def io_method(request) -> str:
    require_method(request.param)
    return request.param


@pytest.fixture
def aio(io_method):
    a = Aio(io_method, io_max_concurrency=16)
    yield a
    a.shutdown()


@pytest.fixture
def faulty_aio(io_method):
    method = FaultInjectingMethod(make_method(io_method))
    a = Aio(method=method, io_max_concurrency=16)
    yield a, method
    a.shutdown()
