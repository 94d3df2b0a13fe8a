"""``slonik dump`` / ``slonik load`` (engine/tools/dump.py, offline.py): the COPY text
codec, the round trip dump → load → dump, the read-only promise (the database directory
hashed before and after), refusals (a crashed, open or non-empty database; names
PostgreSQL cannot hold) and bad dump files (each error names its line, nothing written).
Every test that reads or writes a database runs on every io method."""

from __future__ import annotations

import inspect
import io
import math
import os
import pty
import signal
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slonik.engine.access.tuple import MAX_TUPLE_DATA_BYTES
from slonik.engine.database import DatabaseLockedError
from slonik.engine.tools.cli import main
from slonik.engine.tools.dump import (
    FOOTER_LINE,
    FORMAT_LINE,
    DumpError,
    DumpFormatError,
    IndexDef,
    LoadError,
    RelationDef,
    copy_line,
    copy_text,
    create_table_sql,
    dump_database,
    float8_out,
    load_database,
    parse_copy_line,
    parse_copy_value,
    post_data_sql,
    relation_def,
    validate_dump,
    write_dump,
)
from slonik.engine.tools.offline import RecoveryNeededError
from slonik.engine.tools.progress import Progress
from slonik.storage.errors import DataCorruptionError
from slonik.storage.page import BLCKSZ, init_page, page_set_checksum
from slonik.wal.control import DbState, read_control

from slonik import Database
from tests.engine.dbutil import SMALL
from tests.support.dirstate import dir_state

SLONIK = os.path.join(os.path.dirname(sys.executable), "slonik")
CHILD_TIMEOUT_SECONDS = 120
ALL_TYPES = [("i", "int8"), ("f", "float8"), ("s", "text"), ("b", "bytea"), ("ok", "bool")]


def norm(value):
    """A value comparable across a round trip: floats by their bits (-0.0 stays apart
    from 0.0), every NaN alike (PostgreSQL keeps no NaN payload either)."""
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else struct.pack("<d", value)
    return value


def norm_rows(rows) -> list:
    return sorted((tuple(norm(v) for v in r) for r in rows), key=repr)


def without_path_line(script: bytes) -> bytes:
    """The script without its "Dumped from ... <path>" comment (the only line that
    depends on where the database lives)."""
    return b"\n".join(line for line in script.split(b"\n")
                      if not line.startswith(b"-- Dumped from the Slonik database "))


def dump_bytes(path, io_method: str) -> bytes:
    buf = io.BytesIO()
    write_dump(str(path), buf, io_method=io_method)
    return buf.getvalue()


def new_db(path, io_method: str) -> None:
    with Database.open(path, io_method=io_method, **SMALL):
        pass


# --- the COPY text codec (pure) -------------------------------------------------------------------

texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=40) | st.sampled_from(["", "\\", "\\N", "\\.", "\t", "\n", "\r",
                                                "a\\tb", "\b\f\v\x01\x7f", "é€😀"])
VALUES = {
    "int8": st.integers(-(1 << 63), (1 << 63) - 1),
    "float8": st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.0, -0.0, 1e15, 1e-5, 1e16, 123456789012345.6, 5e-324]),
    "text": texts,
    "bytea": st.binary(max_size=40),
    "bool": st.booleans(),
}


@given(st.data())
def test_copy_value_round_trip_and_one_line(data):
    """For every column type, a value (or NULL) written by copy_text reads back equal with
    parse_copy_value (floats bit for bit, NaN as NaN), and the text never holds a raw
    tab or newline, so a row stays one line of tab-separated fields."""
    for typ, strategy in VALUES.items():
        value = data.draw(st.none() | strategy, label=typ)
        text = copy_text(value, typ)
        assert "\t" not in text and "\n" not in text and "\r" not in text
        assert norm(parse_copy_value(text.encode(), typ)) == norm(value)


@given(st.tuples(*[st.none() | VALUES[t] for _n, t in ALL_TYPES]))
def test_copy_line_round_trip(row):
    """A whole row through copy_line and parse_copy_line comes back equal."""
    line = copy_line(row, [t for _n, t in ALL_TYPES])
    assert [norm(v) for v in parse_copy_line(line.encode(), ALL_TYPES)] == [norm(v) for v in row]


@pytest.mark.parametrize("value, text", [
    (1e15, "1e+15"), (1e14, "100000000000000"), (123456789012345.0, "123456789012345"),
    (1.5e-05, "1.5e-05"), (0.0001, "0.0001"), (0.1, "0.1"), (1.0, "1"), (-2.5, "-2.5"),
    (0.0, "0"), (-0.0, "-0"), (5e-324, "5e-324"), (1.7976931348623157e308,
                                                      "1.7976931348623157e+308"),
    (1e100, "1e+100"), (math.inf, "Infinity"), (-math.inf, "-Infinity"), (math.nan, "NaN"),
    # repr's shortest digits sit on the rounding interval's bound: PostgreSQL excludes it
    (3.232534733378191e16, "3.2325347333781912e+16"), (123456789012345678.0,
                                                       "1.2345678901234568e+17"),
])
def test_float8_out_writes_what_postgresql_writes(value, text):
    """float8_out gives PostgreSQL's float8out text (shortest digits; fixed notation for
    decimal exponents -4..14, else d.ddde+XX with two exponent digits at least; the
    words Infinity, -Infinity, NaN; -0), checked against what PostgreSQL 18.6 printed for
    these values, including one where Python's repr differs."""
    assert float8_out(value) == text


@given(st.floats(allow_nan=False))
def test_float8_out_reads_back_exactly(x):
    """float(float8_out(x)) is x, bit for bit."""
    assert struct.pack("<d", float(float8_out(x))) == struct.pack("<d", x)


@pytest.mark.parametrize("field, typ, message", [
    (b"abc\\", "text", "backslash ends the field"),
    (b"a\\qb", "text", "bad escape"),
    (b"\\\\x0", "bytea", "even number of hex digits"),
    (b"x00", "bytea", "\\x-prefixed hex"),
    (b"9223372036854775808", "int8", "not a bigint"),
    (b"1.5", "int8", "not a bigint"),
    (b"1e400", "float8", "out of range"),
    (b"maybe", "bool", "not a boolean"),
    (b"\\377", "text", "not valid UTF-8"),
])
def test_bad_copy_values_are_refused(field, typ, message):
    """A field that is no value of its type (or a bad escape) raises ValueError saying
    what is wrong, instead of loading something else."""
    with pytest.raises(ValueError, match=message.replace("\\", "\\\\").replace(".", "\\.")):
        parse_copy_value(field, typ)


# --- schema SQL (pure) ------------------------------------------------------------------------------

@dataclass(frozen=True)
class FutureEntry:
    """A catalog entry as the engine will give it once tables have keys and indexes."""

    name: str
    kind: str
    columns: tuple
    primary_key: str
    indexes: tuple


def test_primary_keys_and_indexes_are_written_and_read_back():
    """A table entry exposing ``primary_key`` and ``indexes`` is dumped with
    ``ALTER TABLE ONLY ... ADD PRIMARY KEY`` and ``CREATE [UNIQUE] INDEX ... USING btree``
    (post-data, after the rows), identifiers double-quoted (a quote doubled); the load's
    validating pass reads the same definitions back from that script."""
    entry = FutureEntry("ev\"ents", "table", (("id", "int8"), ("name", "text")), "id",
                        ({"name": "by_name", "columns": ["name"], "unique": False},
                         IndexDef("by name id", ("name", "id"), True)))
    rdef = relation_def(entry)
    assert rdef == RelationDef("ev\"ents", "table", (("id", "int8"), ("name", "text")),
                               ("id",), (IndexDef("by_name", ("name",), False),
                                         IndexDef("by name id", ("name", "id"), True)))
    create, post = create_table_sql(rdef), post_data_sql(rdef)
    assert 'CREATE TABLE public."ev""ents" (\n    "id" bigint NOT NULL,\n    "name" text\n);' \
        in create
    assert 'ALTER TABLE ONLY public."ev""ents"\n    ADD PRIMARY KEY ("id");' in post
    assert 'CREATE INDEX "by_name" ON public."ev""ents" USING btree ("name");' in post
    assert ('CREATE UNIQUE INDEX "by name id" ON public."ev""ents" USING btree ("name", "id");'
            in post)
    script = (f"{FORMAT_LINE}\n{create}COPY public.\"ev\"\"ents\" (\"id\", \"name\") FROM stdin;"
              f"\n1\tboot\n\\.\n{post}{FOOTER_LINE}\n")
    plan = validate_dump(io.BytesIO(script.encode()))
    assert plan.relations == {rdef.name: rdef} and plan.rows == {rdef.name: 1}


def test_load_of_keys_and_indexes_needs_the_engine_to_have_them(tmp_path, io_method):
    """A dump whose table has a primary key and an index loads only into an engine whose
    ``create_table`` takes ``primary_key`` (and whose tables have ``create_index``);
    otherwise it is refused with LoadError naming the table before anything is written."""
    rdef = RelationDef("t", "table", (("id", "int8"),), ("id",), (IndexDef("t_id", ("id",)),))
    script = (f"{FORMAT_LINE}\n{create_table_sql(rdef)}COPY public.\"t\" (\"id\") FROM stdin;\n"
              f"7\n\\.\n{post_data_sql(rdef)}{FOOTER_LINE}\n")
    (tmp_path / "d.sql").write_text(script)
    new_db(tmp_path / "db", io_method)
    supported = "primary_key" in inspect.signature(Database.create_table).parameters
    if not supported:
        before = dir_state(tmp_path / "db")
        with pytest.raises(LoadError, match="primary keys \\(t\\)"):
            load_database(tmp_path / "db", tmp_path / "d.sql", io_method=io_method)
        assert dir_state(tmp_path / "db") == before
        return
    load_database(tmp_path / "db", tmp_path / "d.sql", io_method=io_method)
    with Database.open(tmp_path / "db", io_method=io_method) as db:
        assert list(db.table("t").scan()) == [(7,)]


# --- dump → load round trip ----------------------------------------------------------------------------

ROWS = st.lists(st.tuples(*[st.none() | VALUES[t] for _n, t in ALL_TYPES]), max_size=25)
PAIRS = st.dictionaries(st.binary(max_size=24), st.binary(max_size=48), max_size=25)


def _source(path, io_method, rows, dead, pairs, overwritten):
    """A database with table "all types" (``rows``, plus ``dead`` rows inserted then
    deleted, plus a row of an aborted transaction) and KV store "kv" (``pairs``, some
    first written with other values, one deleted key); returns what is live."""
    with Database.open(path, io_method=io_method, **SMALL) as db:
        t = db.create_table("all types", ALL_TYPES)
        kv = db.kv("kv")
        with db.transaction():
            t.insert_many(rows)
            doomed = t.insert_many(dead)
        for tid in doomed:
            t.delete(tid)
        with pytest.raises(ZeroDivisionError), db.transaction():
            t.insert((42, 4.2, "aborted", b"x", True))
            kv[b"aborted"] = b"x"
            1 / 0  # noqa: B018
        for key in overwritten:
            kv[key] = b"old " + key
        kv[b"deleted key"] = b"gone"
        del kv[b"deleted key"]
        with db.transaction():
            for key, value in pairs.items():
                kv[key] = value
    return rows, pairs


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=ROWS, dead=ROWS, pairs=PAIRS, data=st.data())
def test_dump_load_round_trip_equals_the_source(io_method, rows, dead, pairs, data):
    """A database with rows of every type (NULLs, empty strings, backslashes, tabs,
    newlines, CR, non-UTF-8 bytea, negative and special floats, big ints), deleted rows,
    an aborted transaction and a KV store of arbitrary bytes (some keys overwritten, one
    deleted) is dumped and loaded into a new database: the new one holds exactly the live
    rows and pairs of the source, and dumping it gives the same script byte for byte
    (only the line naming the source directory differs)."""
    overwritten = data.draw(st.lists(st.sampled_from(sorted(pairs)), unique=True)
                            if pairs else st.just([]))
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "src"), os.path.join(tmp, "dst")
        rows, pairs = _source(src, io_method, rows, dead, pairs, overwritten)
        script = dump_bytes(src, io_method)
        with open(os.path.join(tmp, "d.sql"), "wb") as f:
            f.write(script)
        new_db(dst, io_method)
        summary = load_database(dst, os.path.join(tmp, "d.sql"), io_method=io_method)
        assert summary.relations == (("all types", "table", len(rows)), ("kv", "kv", len(pairs)))
        with Database.open(dst, io_method=io_method) as db:
            assert db.relations() == {"all types": "table", "kv": "kv"}
            assert norm_rows(db.table("all types").scan()) == norm_rows(rows)
            assert dict(db.kv("kv").items()) == pairs
        assert without_path_line(dump_bytes(dst, io_method)) == without_path_line(script)


def test_cli_dump_pipes_into_load(tmp_path, io_method):
    """Through the installed entry point: ``slonik dump A | slonik load B -`` copies a
    table and a KV store (exit 0 on both sides, no traceback), and ``dump --out`` writes
    the same script to a file and says what it dumped."""
    a, b = tmp_path / "a", tmp_path / "b"
    with Database.open(a, io_method=io_method, **SMALL) as db:
        db.create_table("t", [("id", "int8"), ("name", "text")]).insert_many(
            [(i, f"row\t{i}") for i in range(300)])
        db.kv("users").update({b"alice": b"\x00\xff", b"bob": b""})
    new_db(b, io_method)
    dump = subprocess.Popen([SLONIK, "dump", str(a), "--io-method", io_method],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    load = subprocess.run([SLONIK, "load", str(b), "-", "--io-method", io_method],
                          stdin=dump.stdout, capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_SECONDS)
    dump.stdout.close()
    dump_err = dump.stderr.read().decode()
    dump.stderr.close()
    assert dump.wait(timeout=CHILD_TIMEOUT_SECONDS) == 0, dump_err
    assert (load.returncode, load.stderr) == (0, ""), load.stderr
    assert load.stdout == f"loaded 2 relations (302 rows) into {b}\n"
    with Database.open(b, io_method=io_method) as db:
        assert sorted(db.table("t").scan()) == [(i, f"row\t{i}") for i in range(300)]
        assert dict(db.kv("users").items()) == {b"alice": b"\x00\xff", b"bob": b""}
    out = tmp_path / "out.sql"
    code = main(["dump", str(a), "--out", str(out), "--io-method", io_method])
    assert code == 0
    assert without_path_line(out.read_bytes()) == without_path_line(dump_bytes(a, io_method))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


# --- read-only ------------------------------------------------------------------------------------

def test_dump_leaves_the_directory_byte_identical(tmp_path, io_method, capsys):
    """Every file under the database directory is hashed (bytes, size, mtime; directory
    mtimes too) before and after ``slonik dump`` (to stdout and with --out): identical,
    so no lock file, no recovery, no checkpoint, nothing written."""
    path = tmp_path / "db"
    with Database.open(path, io_method=io_method, **SMALL) as db:
        t = db.create_table("t", [("id", "int8"), ("payload", "bytea")])
        t.insert_many([(i, os.urandom(100)) for i in range(2000)])
        db.kv("k").update({b"%05d" % i: b"v" * 50 for i in range(500)})
    before = dir_state(path)
    assert main(["dump", str(path), "--io-method", io_method]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.startswith(FORMAT_LINE) and out.endswith(FOOTER_LINE + "\n")
    assert out.count("\n") > 2500
    assert main(["dump", str(path), "--out", str(tmp_path / "d.sql"),
                 "--io-method", io_method]) == 0
    assert "dumped 2 relations (2,500 rows" in capsys.readouterr().out
    assert dir_state(path) == before


def test_dump_reports_progress(tmp_path, io_method):
    """The progress object is told the pages to read, and each page read advances it."""
    path = tmp_path / "db"
    with Database.open(path, io_method=io_method, **SMALL) as db:
        db.create_table("t", [("s", "text")]).insert_many([("x" * 200,) for _ in range(400)])
    progress = Progress("dumping", 0, enabled=False)
    summary = write_dump(str(path), io.BytesIO(), io_method=io_method, progress=progress)
    assert summary.pages_read > 5
    assert progress.total == progress.done == summary.pages_read


CRASH_CHILD = """
import sys
from slonik import Database
db = Database.open(sys.argv[1], io_method=sys.argv[2], shared_buffers=128,
                   wal_segment_size=1 << 20, segment_size=64, checkpoint_timeout=3600)
kv = db.kv("acked")
for i in range(200):
    kv[b"k%04d" % i] = b"v%04d" % i
print("ready", flush=True)
sys.stdin.read()
"""


def test_dump_refuses_a_database_that_needs_recovery(tmp_path, io_method, capsys):
    """A writer SIGKILLed after 200 acknowledged puts leaves a database needing recovery:
    dump exits 1 with one line saying so and how to recover (``slonik check --recover``),
    and the directory is byte-identical afterwards. After ``check --recover`` the dump
    holds every acknowledged pair."""
    path = tmp_path / "db"
    child = subprocess.Popen([sys.executable, "-c", CRASH_CHILD, str(path), io_method],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n", child.stderr.read()
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=CHILD_TIMEOUT_SECONDS)
        for stream in (child.stdin, child.stdout, child.stderr):
            stream.close()
    assert read_control(str(path)).state != DbState.SHUTDOWNED
    before = dir_state(path)
    assert main(["dump", str(path), "--io-method", io_method]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert "needs recovery" in err and f"slonik check --recover {path}" in err
    with pytest.raises(RecoveryNeededError):
        write_dump(str(path), io.BytesIO(), io_method=io_method)
    assert dir_state(path) == before
    assert main(["check", "--recover", str(path), "--io-method", io_method]) == 0
    capsys.readouterr()
    script = dump_bytes(path, io_method).decode()
    lines = script[script.index('COPY public."acked"'):].split("\n")[1:201]
    assert lines == [f"\\\\x{(b'k%04d' % i).hex()}\t\\\\x{(b'v%04d' % i).hex()}"
                     for i in range(200)]


def test_dump_refuses_an_open_database(tmp_path, io_method):
    """While a Database has the directory open (its lock held), dump refuses with
    DatabaseLockedError naming the holder's pid: the files change under a running
    database, so they are no snapshot."""
    with Database.open(tmp_path / "db", io_method=io_method, **SMALL) as db:
        db.kv("k")[b"a"] = b"b"
        with pytest.raises(DatabaseLockedError, match=f"open in process {os.getpid()}"):
            write_dump(str(tmp_path / "db"), io.BytesIO(), io_method=io_method)


@pytest.mark.parametrize("columns, row, message", [
    ([("xmin", "int8")], (1,), "column 'xmin' of table 't' has the name of a PostgreSQL "
                               "system column"),
    ([("c" * 64, "int8")], (1,), "is 64 bytes in UTF-8; PostgreSQL truncates"),
    ([("id", "int8"), ("s", "text")], (1, "a\x00b"), "table 't', row 2: a text value "
                                                       "contains a NUL"),
])
def test_dump_refuses_what_postgresql_cannot_hold(tmp_path, io_method, columns, row, message):
    """A column PostgreSQL cannot create (a system column's name, a name over 63 bytes)
    or a text value with a NUL stops the dump with DumpError naming table, column or row;
    ``--out`` then leaves no file (neither the target nor a temporary one)."""
    path = tmp_path / "db"
    with Database.open(path, io_method=io_method, **SMALL) as db:
        good = tuple(0 if t == "int8" else "ok" for _n, t in columns)
        db.create_table("t", columns).insert_many([good, row])
    with pytest.raises(DumpError, match=message):
        dump_database(path, tmp_path / "d.sql", io_method=io_method)
    assert sorted(os.listdir(tmp_path)) == ["db"]


# --- load refusals ----------------------------------------------------------------------------------------

def _good_script(path, io_method) -> str:
    with Database.open(path, io_method=io_method, **SMALL) as db:
        db.create_table("t", [("id", "int8"), ("name", "text"), ("b", "bytea")]).insert_many(
            [(1, "one", b"\x01"), (2, "two", None)])
        db.kv("k").update({b"a": b"1", b"b": b"2"})
    return dump_bytes(path, io_method).decode()


def test_load_refuses_a_non_empty_database(tmp_path, io_method):
    """Load into a database that has a relation is refused with LoadError naming it, and
    the directory is byte-identical afterwards (refused before the database is opened)."""
    (tmp_path / "d.sql").write_text(_good_script(tmp_path / "src", io_method))
    with Database.open(tmp_path / "db", io_method=io_method, **SMALL) as db:
        db.kv("already here")[b"x"] = b"y"
    before = dir_state(tmp_path / "db")
    with pytest.raises(LoadError, match="it holds already here; load reads a dump into an "
                                        "empty database only"):
        load_database(tmp_path / "db", tmp_path / "d.sql", io_method=io_method)
    assert dir_state(tmp_path / "db") == before


def _mutations(script: str) -> list[tuple[str, str, int, str]]:
    """(label, broken script, line number the error must name, message fragment)."""
    lines = script.split("\n")
    copy_t = lines.index('COPY public."t" ("id", "name", "b") FROM stdin;')
    copy_k = lines.index('COPY public."k" ("key", "value") FROM stdin;')
    create = lines.index('CREATE TABLE public."t" (')

    def with_line(i: int, text: str) -> str:
        return "\n".join(lines[:i] + [text] + lines[i + 1:])

    return [
        ("not a dump", "SELECT 1;\n" + script, 1, "not a Slonik dump"),
        ("empty file", "", 1, "not a Slonik dump"),
        ("too few values", with_line(copy_t + 1, "1\tone"), copy_t + 2,
         "2 values, but the COPY names 3 columns"),
        ("too many values", with_line(copy_t + 1, "1\tone\t\\N\t\\N"), copy_t + 2,
         "4 values, but the COPY names 3 columns"),
        ("bad escape", with_line(copy_t + 1, "1\to\\qne\t\\N"), copy_t + 2, "bad escape"),
        ("trailing backslash", with_line(copy_t + 1, "1\tone\\\t\\N"), copy_t + 2,
         "backslash ends the field"),
        ("bad int", with_line(copy_t + 1, "x\tone\t\\N"), copy_t + 2, "column 'id' \\(int8\\)"),
        ("bad bytea", with_line(copy_t + 1, "1\tone\t\\\\xzz"), copy_t + 2,
         "column 'b' \\(bytea\\)"),
        ("keys out of order", with_line(copy_k + 1, "\\\\x62\t\\\\x31"), copy_k + 3,
         "does not follow"),
        ("NULL key", with_line(copy_k + 1, "\\N\t\\\\x31"), copy_k + 2, "a NULL key"),
        ("raw CR", with_line(copy_t + 1, "1\to\rne\t\\N"), copy_t + 2, "raw carriage return"),
        ("unknown type", with_line(create + 1, '    "id" integer,'), create + 1,
         "type 'integer' is not one of"),
        ("unknown statement", with_line(create - 1, "DROP TABLE public.t;"), create,
         "expected SET or SELECT"),
        ("no end of COPY", script[:script.index("\\.")], None, "the file ends"),
        ("truncated", script[:script.rindex(FOOTER_LINE)], None, "truncated"),
        ("text after the end", script + "SELECT 1;\n", len(lines), "text after"),
        ("COPY into an unknown table", with_line(copy_t, 'COPY public."x" ("id") FROM stdin;'),
         copy_t + 1, "relation 'x' was not created"),
    ]


def test_load_refuses_bad_dumps_naming_the_line(tmp_path, io_method):
    """Each broken variant of a good dump (not a dump at all, a COPY line with too few or
    too many values, a bad escape, a value not of its column's type, KV keys out of order,
    an unknown type or statement, a truncated file) is refused with DumpFormatError whose
    message names the line, and the target database is byte-identical afterwards."""
    script = _good_script(tmp_path / "src", io_method)
    new_db(tmp_path / "db", io_method)
    before = dir_state(tmp_path / "db")
    for label, broken, line, message in _mutations(script):
        (tmp_path / "d.sql").write_text(broken)
        with pytest.raises(DumpFormatError, match=message) as info:
            load_database(tmp_path / "db", tmp_path / "d.sql", io_method=io_method)
        if line is not None:
            assert info.value.line == line, (label, str(info.value))
            assert str(info.value).startswith(f"line {line}: "), label
        assert dir_state(tmp_path / "db") == before, label
    (tmp_path / "d.sql").write_text(script)   # and the good one loads
    assert load_database(tmp_path / "db", tmp_path / "d.sql", io_method=io_method).rows == 4


def test_cli_load_of_a_bad_file_is_one_line(tmp_path, io_method, capsys):
    """``slonik load`` of a file that is not a dump exits 1 with one stderr line naming
    line 1."""
    (tmp_path / "x.sql").write_text("hello\n")
    new_db(tmp_path / "db", io_method)
    assert main(["load", str(tmp_path / "db"), str(tmp_path / "x.sql")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("slonik load: line 1: not a Slonik dump")
    assert err.count("\n") == 1


def test_a_failed_write_leaves_the_database_empty(tmp_path, io_method):
    """A dump that validates but cannot be written (a row too large for a page) raises
    the engine's error, and every relation the load had created is dropped again."""
    script = _good_script(tmp_path / "src", io_method)
    big = "x" * (MAX_TUPLE_DATA_BYTES + 1)
    script = script.replace("2\ttwo\t\\N", f"2\t{big}\t\\N")
    (tmp_path / "d.sql").write_text(script)
    new_db(tmp_path / "db", io_method)
    with pytest.raises(ValueError, match="row data is"):
        load_database(tmp_path / "db", tmp_path / "d.sql", io_method=io_method)
    with Database.open(tmp_path / "db", io_method=io_method) as db:
        assert db.relations() == {}


def test_dump_shows_the_catalog_as_the_engine_loads_it(tmp_path, io_method):
    """A relation dropped and a new one created under the same name (two catalog rows of
    that name, one deleted by a committed drop) dumps as the new one only, and a dropped
    KV store is gone from the dump."""
    path = tmp_path / "db"
    with Database.open(path, io_method=io_method, **SMALL) as db:
        db.create_table("name", [("old", "int8")]).insert((1,))
        db.kv("dropped")[b"k"] = b"v"
        db.drop("name")
        db.drop("dropped")
        db.kv("name")[b"new"] = b"pair"
    script = dump_bytes(path, io_method).decode()
    assert script.count("CREATE TABLE") == 1 and '"dropped"' not in script
    assert 'COPY public."name" ("key", "value") FROM stdin;\n\\\\x6e6577\t\\\\x70616972\n\\.' \
        in script


def test_a_damaged_page_stops_the_dump(tmp_path, io_method):
    """A flipped byte in block 1 of a table's file fails the dump with
    DataCorruptionError naming that relation and block (never a dump that silently
    misses rows), and ``--out`` leaves no file behind."""
    path = tmp_path / "db"
    with Database.open(path, io_method=io_method, **SMALL) as db:
        t = db.create_table("t", [("s", "text")])
        t.insert_many([("x" * 100,) for _ in range(300)])
        rel = t.rel
    with open(path / "base" / str(rel), "r+b") as f:
        f.seek(BLCKSZ + BLCKSZ // 2)
        byte = f.read(1)
        f.seek(BLCKSZ + BLCKSZ // 2)
        f.write(bytes([byte[0] ^ 0x40]))
    with pytest.raises(DataCorruptionError, match=f"block 1 of relation {rel}") as info:
        dump_database(path, tmp_path / "d.sql", io_method=io_method)
    assert (info.value.relation, info.value.block) == (rel, 1)
    assert sorted(os.listdir(tmp_path)) == ["db"]


def test_a_relation_kind_dump_does_not_know_is_refused():
    """A catalog entry of a kind other than table or KV store (say, an index, once the
    catalog lists them) stops the dump with DumpError naming it, instead of being
    written as a table."""
    entry = FutureEntry("by_name", "index", (("name", "text"),), "", ())
    with pytest.raises(DumpError, match="relation 'by_name' is of kind 'index'"):
        relation_def(entry)


def test_kv_store_table_shape():
    """A KV store is written as the table (key bytea PRIMARY KEY, value bytea): the key
    column NOT NULL (as pg_dump writes a primary key column), the value plain, the
    marker line before it and the comment after it."""
    rdef = relation_def(FutureEntry("users", "kv", (), "", ()))
    assert create_table_sql(rdef).endswith(
        '-- slonik: kv store\nCREATE TABLE public."users" (\n    "key" bytea NOT NULL,\n'
        '    "value" bytea\n);\n\nCOMMENT ON TABLE public."users" IS \'Slonik KV store\';\n\n')
    assert post_data_sql(rdef).endswith(
        'ALTER TABLE ONLY public."users"\n    ADD PRIMARY KEY ("key");\n\n')


def test_progress_is_shown_on_a_terminal_only(tmp_path, io_method):
    """Through the installed entry point with stderr on a pseudo-terminal, ``slonik
    dump --out`` redraws a progress line that ends at every page read (N/N pages); with
    stderr on a pipe it writes nothing there."""
    path = tmp_path / "db"
    with Database.open(path, io_method=io_method, **SMALL) as db:
        db.create_table("t", [("s", "text")]).insert_many([("x" * 300,) for _ in range(500)])
    pages = write_dump(str(path), io.BytesIO(), io_method=io_method).pages_read
    master, slave = pty.openpty()
    try:
        try:
            proc = subprocess.run([SLONIK, "dump", str(path), "--out",
                                   str(tmp_path / "a.sql"), "--io-method", io_method],
                                  stdout=subprocess.PIPE, stderr=slave,
                                  timeout=CHILD_TIMEOUT_SECONDS)
        finally:
            os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:   # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert b"\rdumping: [" in shown and f"{pages}/{pages} pages".encode() in shown
    piped = subprocess.run([SLONIK, "dump", str(path), "--out", str(tmp_path / "b.sql"),
                            "--io-method", io_method], capture_output=True,
                           timeout=CHILD_TIMEOUT_SECONDS)
    assert (piped.returncode, piped.stderr) == (0, b"")


def test_a_store_not_laid_out_as_a_btree_is_refused(tmp_path, io_method):
    """A KV store whose block 0 is a well-formed page without special space (a heap page,
    as KV stores were laid out before the B+tree) instead of the B+tree's metapage stops
    the dump with DataCorruptionError naming the relation and block 0, instead of
    decoding anything from it."""
    path = tmp_path / "db"
    with Database.open(path, io_method=io_method, **SMALL) as db:
        kv = db.kv("k")
        kv[b"a"] = b"b"
        rel = kv.rel
    page = bytearray(BLCKSZ)
    init_page(page)
    page_set_checksum(page, rel, 0, 0)
    with open(path / "base" / str(rel), "r+b") as f:
        f.write(page)
    with pytest.raises(DataCorruptionError, match=f"B\\+tree relation {rel} block 0") as exc:
        write_dump(str(path), io.BytesIO(), io_method=io_method)
    assert (exc.value.relation, exc.value.block) == (rel, 0)
