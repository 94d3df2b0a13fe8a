"""``slonik dump`` and ``slonik load``: a database as a plain SQL script, and back.

``dump_database(path, out_path)`` writes what ``pg_dump -Fp`` would write for the same data, so
PostgreSQL's ``psql -f`` loads it as it is: the session settings pg_dump sets (UTF-8,
``standard_conforming_strings``, an empty ``search_path``), then ``CREATE TABLE`` for every
relation (pre-data), then each relation's rows as ``COPY ... FROM stdin`` in COPY text
format ended by ``\\.`` (data), then primary keys and indexes (post-data, so they are
built once over the loaded rows)::

    -- Slonik database dump, format 1
    ...
    CREATE TABLE public."events" (
        "id" bigint,
        "name" text
    );
    -- slonik: kv store
    CREATE TABLE public."users" (
        "key" bytea NOT NULL,
        "value" bytea
    );
    COPY public."events" ("id", "name") FROM stdin;
    1	boot
    \\.
    ALTER TABLE ONLY public."users"
        ADD PRIMARY KEY ("key");
    -- Slonik database dump complete

Types map int8 → bigint, float8 → double precision, text → text, bytea → bytea, bool →
boolean. Values are written as PostgreSQL's COPY TO writes them, so a table copied back
out of PostgreSQL gives the same lines: ``\\N`` for NULL; in text, backslash and the
control characters ``\\b \\f \\n \\r \\t \\v`` escaped; bytea as ``\\\\x`` + lowercase hex;
bool ``t``/``f``; float8 as ``float8out`` (Ryu's shortest digits strictly inside the
rounding interval, ``NaN``, ``Infinity``, ``-Infinity``, ``-0``, exponent form outside
1e-4..1e15). A KV store becomes
the table ``(key bytea PRIMARY KEY, value bytea)`` preceded by the comment line
``-- slonik: kv store`` (and a ``COMMENT ON TABLE`` PostgreSQL keeps), its pairs in key
order. A table's primary key and indexes are written when its catalog entry exposes them
(``primary_key``; ``indexes`` with ``name``, ``columns``, ``unique``). Identifiers are
always double-quoted; a name PostgreSQL cannot hold (over 63 bytes, a NUL, a system
column name such as ``xmin``) or a text value with a NUL stops the dump with
``DumpError`` naming it, rather than writing a script PostgreSQL would load differently.

The dump is read-only (DESIGN §7): the database is read through ``offline.py`` —
every file ``O_RDONLY`` through an ``Aio`` of the chosen io method, no ``Database.open``,
no recovery, no lock file. It reads only a database that was shut down cleanly and is
not open elsewhere; that state is one consistent snapshot (nothing runs, and the shutdown
checkpoint says which xids committed). The control file and the lock are looked at again
after the last page is read: if the database was opened meanwhile, the dump fails.

``load_database(path, dump_path)`` reads such a script back into an empty database in two
passes. The first validates the whole file and writes nothing: the format line, every
statement, every COPY line (column count, escapes, each value against its column type, a
KV store's keys strictly ascending) and the footer that proves the file is complete; a
problem is ``DumpFormatError`` naming the line. Then the database is opened and must
have no relation (``LoadError`` naming those it has, nothing written); the second pass
creates the relations and inserts the rows in transactions of ``LOAD_BATCH_ROWS``. If
writing fails, every relation it created is dropped again before the error is raised.

Invariants:
1. ``dump_database`` opens nothing for writing inside the database directory; its output
   may not be placed there.
2. ``load_database`` writes nothing unless the whole file validated and the database was
   empty; after a failed write it leaves the database empty again.
3. ``parse_copy_value(copy_text(v, t), t) == v`` for every value ``v`` of every column
   type ``t`` (NaN as NaN, -0.0 as -0.0); a property test checks it.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Context, Decimal
from typing import BinaryIO

from slonik.aio.core import Aio
from slonik.aio.errors import SlonikError
from slonik.engine.access.tuple import COLUMN_TYPES, MAX_COLUMNS
from slonik.engine.catalog import RelationEntry
from slonik.engine.database import Database, DatabaseLockedError
from slonik.engine.table import Table
from slonik.engine.tools.offline import (
    RecoveryNeededError,
    RelationFileReader,
    Visibility,
    kv_pairs,
    lock_holder,
    require_database,
    shutdown_visibility,
    table_rows,
    visible_relations,
)
from slonik.storage.smgr import Fork
from slonik.wal.control import read_control

__all__ = [
    "DumpError", "DumpFormatError", "LoadError", "IndexDef", "RelationDef", "DumpSummary",
    "LoadSummary", "relation_def", "quote_ident", "copy_text", "copy_line",
    "parse_copy_line", "parse_copy_value", "float8_out", "create_table_sql",
    "post_data_sql", "dump_database", "write_dump", "validate_dump", "load_database",
    "PG_TYPES", "FORMAT_LINE", "FOOTER_LINE", "KV_MARKER", "LOAD_BATCH_ROWS",
    "DUMP_LINE_MAX_BYTES", "PG_NAME_MAX_BYTES",
]

FORMAT_LINE = "-- Slonik database dump, format 1"
FOOTER_LINE = "-- Slonik database dump complete"
KV_MARKER = "-- slonik: kv store"            # the line before a KV store's CREATE TABLE
KV_COMMENT = "Slonik KV store"              # its COMMENT ON TABLE, kept by PostgreSQL
KV_COLUMNS = (("key", "bytea"), ("value", "bytea"))
PG_TYPES = {"int8": "bigint", "float8": "double precision", "text": "text",
            "bytea": "bytea", "bool": "boolean"}
assert set(PG_TYPES) == set(COLUMN_TYPES), "every column type has a PostgreSQL type"
# What load accepts for each type: the names dump writes and PostgreSQL's aliases.
_TYPE_NAMES = {"bigint": "int8", "int8": "int8", "double precision": "float8",
               "float8": "float8", "text": "text", "bytea": "bytea", "boolean": "bool",
               "bool": "bool"}
PG_NAME_MAX_BYTES = 63        # NAMEDATALEN - 1: PostgreSQL truncates longer identifiers
# Columns every PostgreSQL table already has (a user column of that name is refused).
PG_SYSTEM_COLUMNS = frozenset({"tableoid", "xmin", "cmin", "xmax", "cmax", "ctid"})
# One line of a dump: a row holds at most a page of data today, but a KV value may reach
# 1 GiB once stores have overflow pages: 2 hex digits a byte, plus the key and escapes.
DUMP_LINE_MAX_BYTES = 5 << 30
STATEMENT_MAX_LINES = MAX_COLUMNS + 8  # CREATE TABLE: one line a column, plus its frame
LOAD_BATCH_ROWS = 10_000      # rows per load transaction: bounds a KV write set in memory
DUMP_WRITE_BATCH_LINES = 512  # COPY lines joined per write call


class DumpError(SlonikError, ValueError):
    """The database holds something a PostgreSQL script cannot represent faithfully, or
    it changed while it was read."""


class DumpFormatError(SlonikError, ValueError):
    """A file that is not a valid Slonik dump; the message starts with the line number."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


class LoadError(SlonikError, ValueError):
    """A load refused before writing (a non-empty database, a feature it lacks)."""


# --- the schema of a relation -------------------------------------------------------------------

@dataclass(frozen=True)
class IndexDef:
    name: str
    columns: tuple[str, ...]
    unique: bool = False


@dataclass(frozen=True)
class RelationDef:
    """What a dump says of one relation: ``kind`` "table" or "kv", its columns, and the
    primary key and indexes when it has them."""

    name: str
    kind: str
    columns: tuple[tuple[str, str], ...]
    primary_key: tuple[str, ...] = ()
    indexes: tuple[IndexDef, ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(n for n, _t in self.columns)

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(t for _n, t in self.columns)


def _index_def(index: object) -> IndexDef:
    if isinstance(index, IndexDef):
        return index
    get = index.get if isinstance(index, dict) else lambda k, d=None: getattr(index, k, d)
    name, columns = get("name"), get("columns")
    if not isinstance(name, str) or not columns:
        raise DumpError(f"an index definition without a name and columns: {index!r}")
    cols = (columns,) if isinstance(columns, str) else tuple(columns)
    return IndexDef(name, cols, bool(get("unique", False)))


def relation_def(entry: RelationEntry | object) -> RelationDef:
    """The dump's view of a catalog entry (or anything with ``name``, ``kind``,
    ``columns``). A KV store is ``(key, value)`` with ``key`` its primary key; a table's
    ``primary_key`` (a column name or a sequence of them) and ``indexes`` are taken when
    the entry has them, so the dump writes them as soon as the catalog records them."""
    name, kind = entry.name, getattr(entry, "kind", "table")
    if kind == "kv":
        return RelationDef(name, "kv", KV_COLUMNS, ("key",))
    if kind != "table":
        raise DumpError(f"relation {name!r} is of kind {kind!r}, which dump does not know "
                        f"how to write (it knows tables and KV stores)")
    pk = getattr(entry, "primary_key", None) or ()
    pk = (pk,) if isinstance(pk, str) else tuple(pk)
    indexes = tuple(_index_def(i) for i in (getattr(entry, "indexes", None) or ())
                    if not getattr(i, "primary", False))   # written as ADD PRIMARY KEY
    return RelationDef(name, "table", tuple((str(n), str(t)) for n, t in entry.columns),
                       pk, indexes)


# --- rendering ------------------------------------------------------------------------------------

def quote_ident(name: str, what: str = "identifier") -> str:
    """``name`` as a double-quoted SQL identifier. ``DumpError`` when PostgreSQL cannot
    hold it as it is (a NUL, or more than ``PG_NAME_MAX_BYTES`` bytes in UTF-8)."""
    if "\x00" in name:
        raise DumpError(f"{what} {name!r} contains a NUL character, which a PostgreSQL "
                        f"identifier cannot hold")
    if len(name.encode("utf-8")) > PG_NAME_MAX_BYTES:
        raise DumpError(f"{what} {name!r} is {len(name.encode('utf-8'))} bytes in UTF-8; "
                        f"PostgreSQL truncates identifiers to {PG_NAME_MAX_BYTES} bytes")
    return '"' + name.replace('"', '""') + '"'


def _qualified(name: str) -> str:
    return "public." + quote_ident(name, "relation name")


def _one_line(text: str) -> str:
    """``text`` for a ``--`` comment line (a line break would end the comment)."""
    return re.sub(r"[\x00-\x1f]", " ", text)


def _ident_list(names: Sequence[str], what: str) -> str:
    return ", ".join(quote_ident(n, what) for n in names)


# Exact arithmetic on doubles: a double's decimal expansion has at most 767 significant
# digits, and the midpoint of two neighbours one more.
_EXACT = Context(prec=800)
_BOUNDS_NEED_CHECKING_FROM = float(1 << 53)
# Where float8out and repr both use fixed notation (repr up to 1e16, float8out to 1e15),
# so repr's text is float8out's but for the ".0" repr gives an integral value.
_FIXED_FROM, _FIXED_BELOW = 1e-4, 1e15
assert _FIXED_BELOW < _BOUNDS_NEED_CHECKING_FROM


def _strictly_between(candidate: Decimal, low: Decimal, high: Decimal) -> bool:
    return low < candidate < high


def _shortest(x: float) -> Decimal:
    """The digits PostgreSQL's Ryu (src/common/d2s.c) picks for ``x`` > 0: the shortest
    decimal strictly inside x's rounding interval (its bounds excluded, whatever the
    mantissa's parity), the one nearest ``x`` among those. Python's ``repr`` is the
    shortest decimal that reads back as ``x``, bounds included: the same digits except
    when they sit exactly on a bound (3.232534733378191e+16, where PostgreSQL writes
    3.2325347333781912e+16). Below 2**53 no bound of an interval has 17 significant
    digits or fewer (each is an odd multiple of a power of two at most 2**-1, times a
    mantissa of 53 bits), so ``repr`` is the answer there without exact arithmetic."""
    if x < _BOUNDS_NEED_CHECKING_FROM:
        return Decimal(repr(x))
    exact = Decimal(x)
    down, up = math.nextafter(x, 0.0), math.nextafter(x, math.inf)
    low = _EXACT.divide(_EXACT.add(exact, Decimal(down)), 2)
    gap_up = _EXACT.subtract(Decimal(up), exact) if math.isfinite(up) else \
        _EXACT.subtract(exact, Decimal(down))
    high = _EXACT.add(exact, _EXACT.divide(gap_up, 2))
    shortest = Decimal(repr(x))
    if _strictly_between(shortest, low, high):
        return shortest
    for ndigits in range(len(shortest.as_tuple().digits), 18):
        nearest = Decimal(f"{x:.{ndigits - 1}e}")
        unit = Decimal((0, (1,), nearest.as_tuple().exponent))
        found = [c for c in (nearest, _EXACT.add(nearest, unit), _EXACT.subtract(nearest, unit))
                 if _strictly_between(c, low, high)]
        if found:
            return min(found, key=lambda c: abs(_EXACT.subtract(c, exact)))
    raise AssertionError(f"no 17-digit decimal inside the rounding interval of {x!r}")


def float8_out(x: float) -> str:
    """``x`` as PostgreSQL's float8out writes it (``extra_float_digits`` > 0, the
    default): the shortest digits strictly inside its rounding interval (``_shortest``),
    fixed notation for decimal exponents -4..14 and ``d.ddde+XX`` otherwise; NaN,
    Infinity, -Infinity, -0."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if _FIXED_FROM <= abs(x) < _FIXED_BELOW:   # both write fixed notation; repr adds ".0"
        text = repr(x)
        return text[:-2] if text.endswith(".0") else text
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    _sign, digit_tuple, exponent = _shortest(abs(x)).as_tuple()
    sign = x < 0
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exponent += len(digit_tuple) - len(digits)                 # trailing zeros dropped
    e10 = exponent + len(digits) - 1                           # x = d.ddd * 10**e10
    minus = "-" if sign else ""
    if -4 <= e10 < 15:
        if exponent >= 0:
            return minus + digits + "0" * exponent
        point = len(digits) + exponent
        if point > 0:
            return minus + digits[:point] + "." + digits[point:]
        return minus + "0." + "0" * -point + digits
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{minus}{mantissa}e{'-' if e10 < 0 else '+'}{abs(e10):02d}"


# COPY TO's escapes (copyto.c CopyAttributeOutText); other control bytes are written raw.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n",
                               "\r": "\\r", "\t": "\\t", "\v": "\\v"})


def _text_out(value: str) -> str:
    if "\x00" in value:
        raise DumpError("a text value contains a NUL character, which PostgreSQL text "
                        "cannot hold")
    return value.translate(_COPY_ESCAPES)


def _bytea_out(value: bytes) -> str:
    return "\\\\x" + value.hex()


def _bool_out(value: bool) -> str:
    return "t" if value else "f"


_OUT = {"int8": str, "float8": float8_out, "text": _text_out, "bytea": _bytea_out,
        "bool": _bool_out}
assert set(_OUT) == set(COLUMN_TYPES)


def copy_text(value: object, typ: str) -> str:
    """One value of a column of type ``typ`` in COPY text format."""
    return "\\N" if value is None else _OUT[typ](value)


def copy_line(row: Sequence, types: Sequence[str]) -> str:
    """A row as one COPY text line (without the newline)."""
    return "\t".join(["\\N" if v is None else _OUT[t](v)
                      for v, t in zip(row, types, strict=True)])


def create_table_sql(rdef: RelationDef) -> str:
    """The relation's ``CREATE TABLE`` (a KV store's with its marker line and comment).
    ``DumpError`` for a name PostgreSQL cannot hold as it is."""
    cols = []
    for name, typ in rdef.columns:
        if name in PG_SYSTEM_COLUMNS:
            raise DumpError(f"column {name!r} of table {rdef.name!r} has the name of a "
                            f"PostgreSQL system column; PostgreSQL cannot create it")
        not_null = " NOT NULL" if name in rdef.primary_key else ""   # as pg_dump writes it
        cols.append(f"    {quote_ident(name, 'column name')} {PG_TYPES[typ]}{not_null}")
    kind = "Slonik KV store" if rdef.kind == "kv" else "TABLE"
    parts = [f"--\n-- Name: {rdef.name}; Type: {kind}; Schema: public\n--\n\n"]
    if rdef.kind == "kv":
        parts.append(KV_MARKER + "\n")
    parts.append(f"CREATE TABLE {_qualified(rdef.name)} (\n" + ",\n".join(cols) + "\n);\n")
    if rdef.kind == "kv":
        parts.append(f"\nCOMMENT ON TABLE {_qualified(rdef.name)} IS '{KV_COMMENT}';\n")
    return "".join(parts) + "\n"


def post_data_sql(rdef: RelationDef) -> str:
    """The relation's primary key and indexes (empty when it has neither)."""
    parts = []
    if rdef.primary_key:
        parts.append(f"--\n-- Name: {rdef.name}; Type: PRIMARY KEY; Schema: public\n--\n\n"
                     f"ALTER TABLE ONLY {_qualified(rdef.name)}\n"
                     f"    ADD PRIMARY KEY ({_ident_list(rdef.primary_key, 'column name')});"
                     f"\n\n")
    for index in rdef.indexes:
        unique = "UNIQUE " if index.unique else ""
        parts.append(f"--\n-- Name: {_one_line(index.name)}; Type: INDEX; Schema: public\n--\n\n"
                     f"CREATE {unique}INDEX {quote_ident(index.name, 'index name')} ON "
                     f"{_qualified(rdef.name)} USING btree "
                     f"({_ident_list(index.columns, 'column name')});\n\n")
    return "".join(parts)


def _header(path: str) -> str:
    return (f"{FORMAT_LINE}\n--\n-- A plain SQL script (PostgreSQL's psql loads it as it is;\n"
            f"-- 'slonik load' reads it back into an empty Slonik database).\n"
            f"-- Dumped from the Slonik database {' '.join(path.split())}\n--\n\n"
            "SET statement_timeout = 0;\n"
            "SET lock_timeout = 0;\n"
            "SET idle_in_transaction_session_timeout = 0;\n"
            "SET client_encoding = 'UTF8';\n"
            "SET standard_conforming_strings = on;\n"
            "SELECT pg_catalog.set_config('search_path', '', false);\n"
            "SET check_function_bodies = false;\n"
            "SET client_min_messages = warning;\n"
            "SET row_security = off;\n\n")


# --- dump -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DumpSummary:
    path: str
    io_method: str
    relations: tuple[tuple[str, str, int], ...]   # (name, kind, rows) in dump order
    pages_read: int

    @property
    def rows(self) -> int:
        return sum(n for _name, _kind, n in self.relations)


def _check_not_open(path: str) -> None:
    holder = lock_holder(path)
    if holder is not None:
        raise DatabaseLockedError(
            f"database {path} is open in process {holder}: dump reads the files of a "
            f"closed database only (they change while it runs); close it there first")


def _relation_rows(reader: RelationFileReader, entry: RelationEntry, visibility: Visibility,
                   progress: Callable[[int], None] | None) -> Iterator[Sequence]:
    """The one place dump reads a relation's data: a table's rows, a KV store's pairs."""
    if entry.kind == "kv":
        return iter(kv_pairs(reader, entry, visibility, progress=progress))
    return table_rows(reader, entry, visibility, progress=progress)


def write_dump(path: str, out: BinaryIO, *, io_method: str = "auto",
               progress=None) -> DumpSummary:
    """Write the dump of the database at ``path`` to the binary stream ``out``; see the
    module docstring. ``progress``: an object with ``total`` and ``advance(n)`` (the
    tools' ``Progress``), told the number of pages once the catalog is read."""
    path = require_database(path)
    _check_not_open(path)
    control = read_control(path)
    visibility = shutdown_visibility(path, control)   # RecoveryNeededError if it crashed
    advance = progress.advance if progress is not None else None
    done = []
    with Aio(io_method) as aio:
        reader = RelationFileReader(path, aio, control.segment_size)
        entries = visible_relations(reader, visibility)
        defs = [relation_def(e) for e in entries.values()]
        pre_data = [create_table_sql(d) for d in defs]   # DumpError before any output
        post_data = [post_data_sql(d) for d in defs]
        pages = {e.name: reader.nblocks(e.relfilenumber, Fork.MAIN) for e in entries.values()}
        if progress is not None:
            progress.total = sum(pages.values())
        out.write((_header(path) + "".join(pre_data)).encode("utf-8"))
        for entry, rdef in zip(entries.values(), defs, strict=True):
            out.write((f"--\n-- Data for Name: {rdef.name}; Type: TABLE DATA; Schema: public\n"
                       f"--\n\nCOPY {_qualified(rdef.name)} "
                       f"({_ident_list(rdef.column_names, 'column name')}) FROM stdin;\n"
                       ).encode())
            rows = 0
            types = rdef.types
            batch: list[str] = []
            for row in _relation_rows(reader, entry, visibility, advance):
                try:
                    batch.append(copy_line(row, types))
                except DumpError as exc:
                    raise DumpError(f"{rdef.kind} {rdef.name!r}, row {rows + 1}: {exc}") from None
                rows += 1
                if len(batch) >= DUMP_WRITE_BATCH_LINES:
                    out.write(("\n".join(batch) + "\n").encode("utf-8"))
                    batch.clear()
            if batch:
                out.write(("\n".join(batch) + "\n").encode("utf-8"))
            out.write(b"\\.\n\n")
            done.append((rdef.name, rdef.kind, rows))
        used_method = aio.method.name
    # One snapshot: nothing may have opened the database while its pages were read. Said
    # before the footer, so a script cut short here is refused by load as truncated.
    if read_control(path) != control or lock_holder(path) is not None:
        raise DumpError(f"database {path} was opened while dump read it, so the dump may "
                        f"not be one consistent snapshot; run dump again")
    out.write(("".join(post_data) + FOOTER_LINE + "\n").encode("utf-8"))
    return DumpSummary(path, used_method, tuple(done), sum(pages.values()))


def _inside(child: str, parent: str) -> bool:
    child, parent = os.path.realpath(child), os.path.realpath(parent)
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def dump_database(path: str | os.PathLike, out_path: str | os.PathLike, *,
                  io_method: str = "auto", progress=None) -> DumpSummary:
    """Dump the database at ``path`` into the file ``out_path``: written beside it under a
    temporary name, synced, then renamed over it, so a failed dump leaves no partial
    script behind (a non-regular ``out_path`` such as ``/dev/null`` is written directly).
    The file may not be inside the database directory."""
    path = require_database(path)
    out_path = os.path.abspath(os.fspath(out_path))
    if _inside(out_path, path):
        raise ValueError(f"the dump file {out_path} is inside the database directory "
                         f"{path}; dump never writes there")
    if os.path.exists(out_path) and not os.path.isfile(out_path):
        with open(out_path, "wb") as out:
            return write_dump(path, out, io_method=io_method, progress=progress)
    fd, temp = tempfile.mkstemp(dir=os.path.dirname(out_path),
                                prefix=os.path.basename(out_path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            summary = write_dump(path, out, io_method=io_method, progress=progress)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, out_path)
    except BaseException:
        os.unlink(temp)
        raise
    return summary


# --- reading a dump: COPY values --------------------------------------------------------------------

_ESCAPE_RE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.)|$)", re.S)
_SIMPLE_ESCAPES = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t",
                   b"v": b"\v", b"\\": b"\\"}
_INT_RE = re.compile(r"^[+-]?[0-9]+$")
_FLOAT_RE = re.compile(r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
_FLOAT_WORDS = {"nan": math.nan, "infinity": math.inf, "+infinity": math.inf,
                "-infinity": -math.inf, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf}
_BOOL_WORDS = {"t": True, "true": True, "y": True, "yes": True, "on": True, "1": True,
               "f": False, "false": False, "n": False, "no": False, "off": False, "0": False}
_INT8_MIN, _INT8_MAX = -(1 << 63), (1 << 63) - 1


def _unescape(field: bytes) -> bytes:
    """COPY text de-escaping (copyfromparse.c): ``\\b \\f \\n \\r \\t \\v \\\\``, 1-3 octal
    digits, ``\\x`` and 1-2 hex digits. Stricter than PostgreSQL, which reads any other
    ``\\c`` as ``c``: a Slonik dump never writes one, so it is refused as a bad escape,
    as is a backslash that ends the field."""
    if b"\\" not in field:
        return field

    def one(m: re.Match) -> bytes:
        octal, hexa, char = m.group(1), m.group(2), m.group(3)
        if octal is not None:
            return bytes([int(octal, 8) & 0xFF])
        if hexa is not None:
            return bytes([int(hexa, 16)])
        if char is None:
            raise ValueError("a backslash ends the field (bad escape)")
        replacement = _SIMPLE_ESCAPES.get(char)
        if replacement is None:
            raise ValueError(f"bad escape \\{char.decode('latin-1')!r:.8}")
        return replacement

    return _ESCAPE_RE.sub(one, field)


def parse_copy_value(field: bytes, typ: str) -> object:
    """One raw COPY text field (still escaped) as a value of column type ``typ``;
    ValueError saying what is wrong."""
    if field == b"\\N":
        return None
    raw = _unescape(field)
    if typ == "bytea":
        if not raw.startswith(b"\\x"):
            raise ValueError(f"bytea must be \\x-prefixed hex, got {raw[:20]!r}")
        try:
            return bytes.fromhex(raw[2:].decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"bytea hex is not an even number of hex digits: "
                             f"{raw[:40]!r}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not valid UTF-8 at byte {exc.start}") from None
    if typ == "text":
        if "\x00" in text:
            raise ValueError("text contains a NUL character")
        return text
    if typ == "int8":
        if not _INT_RE.match(text) or not _INT8_MIN <= int(text) <= _INT8_MAX:
            raise ValueError(f"{text[:40]!r} is not a bigint (-2^63 .. 2^63-1)")
        return int(text)
    if typ == "float8":
        word = _FLOAT_WORDS.get(text.strip().lower())
        if word is not None:
            return word
        value = float(text) if _FLOAT_RE.match(text.strip()) else None
        if value is None or math.isinf(value):
            raise ValueError(f"{text[:40]!r} is not a double precision value"
                             + (" (out of range)" if value is not None else ""))
        return value
    if typ == "bool":
        flag = _BOOL_WORDS.get(text.strip().lower())
        if flag is None:
            raise ValueError(f"{text[:40]!r} is not a boolean")
        return flag
    raise AssertionError(f"unknown column type {typ!r}")


def parse_copy_line(line: bytes, columns: Sequence[tuple[str, str]]) -> tuple:
    """One COPY text line (no newline) as a row of ``columns``; ValueError naming the
    column."""
    fields = line.split(b"\t")
    if len(fields) != len(columns):
        raise ValueError(f"{len(fields)} values, but the COPY names {len(columns)} columns")
    row = []
    for f, (name, typ) in zip(fields, columns, strict=True):
        try:
            row.append(parse_copy_value(f, typ))
        except ValueError as exc:
            raise ValueError(f"column {name!r} ({typ}): {exc}") from None
    return tuple(row)


# --- reading a dump: statements --------------------------------------------------------------------

_TOKEN_RE = re.compile(r"""\s*(?:"((?:[^"]|"")*)"|'((?:[^']|'')*)'|([A-Za-z_][A-Za-z0-9_$]*)"""
                       r"""|([+-]?[0-9]+(?:\.[0-9]*)?)|([(),;.=]))""", re.S)


class _Tokens:
    """The tokens of one statement, matched left to right."""

    def __init__(self, text: str, line: int) -> None:
        self.line = line
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        text = text.rstrip()
        while pos < len(text):
            m = _TOKEN_RE.match(text, pos)
            if m is None or m.end() == pos:
                raise DumpFormatError(line, f"unexpected text {text[pos:pos + 30].strip()!r}")
            quoted, string, word, number, punct = m.groups()
            if quoted is not None:
                self.tokens.append(("ident", quoted.replace('""', '"')))
            elif string is not None:
                self.tokens.append(("string", string.replace("''", "'")))
            elif word is not None:
                self.tokens.append(("word", word))
            elif number is not None:
                self.tokens.append(("number", number))
            else:
                self.tokens.append(("punct", punct))
            pos = m.end()
        self.pos = 0

    def error(self, what: str) -> DumpFormatError:
        got = self.tokens[self.pos][1] if self.pos < len(self.tokens) else "the end"
        return DumpFormatError(self.line, f"expected {what}, got {got!r}")

    def peek_word(self, *words: str) -> bool:
        if self.pos < len(self.tokens):
            kind, value = self.tokens[self.pos]
            return kind == "word" and value.upper() in words
        return False

    def word(self, *words: str) -> str:
        if not self.peek_word(*words):
            raise self.error(" or ".join(words))
        self.pos += 1
        return self.tokens[self.pos - 1][1].upper()

    def punct(self, char: str) -> None:
        if self.pos >= len(self.tokens) or self.tokens[self.pos] != ("punct", char):
            raise self.error(repr(char))
        self.pos += 1

    def peek_punct(self, char: str) -> bool:
        return self.pos < len(self.tokens) and self.tokens[self.pos] == ("punct", char)

    def ident(self) -> str:
        """A quoted identifier as written, a bare one folded to lower case."""
        if self.pos < len(self.tokens):
            kind, value = self.tokens[self.pos]
            if kind in ("ident", "word"):
                self.pos += 1
                return value if kind == "ident" else value.lower()
        raise self.error("an identifier")

    def string(self) -> str:
        if self.pos < len(self.tokens) and self.tokens[self.pos][0] == "string":
            self.pos += 1
            return self.tokens[self.pos - 1][1]
        raise self.error("a string literal")

    def relation(self) -> str:
        """``public.name`` (the schema every dump uses)."""
        if self.ident() != "public":
            self.pos -= 1
            raise self.error("the schema public")
        self.punct(".")
        return self.ident()

    def ident_list(self) -> tuple[str, ...]:
        self.punct("(")
        names = [self.ident()]
        while self.peek_punct(","):
            self.punct(",")
            names.append(self.ident())
        self.punct(")")
        return tuple(names)

    def end(self) -> None:
        self.punct(";")
        if self.pos != len(self.tokens):
            raise self.error("the end of the statement")


@dataclass
class _Plan:
    """What the validating pass learned: every relation, its rows, its keys."""

    relations: dict[str, RelationDef] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)


class _DumpReader:
    """One pass over a dump file (binary), statement by statement, checking everything
    and building the plan. The validating pass gives no ``on_row``; the writing pass
    gives ``on_row(name, row)``, called for each row once its line has been checked."""

    def __init__(self, f: BinaryIO, on_row: Callable[[str, tuple], None] | None = None) -> None:
        self.f = f
        self.on_row = on_row
        self.plan = _Plan()
        self.lineno = 0
        self.kv_marker_line = 0          # a "-- slonik: kv store" line waiting for its table
        self.copied: set[str] = set()
        self.pk_of: dict[str, tuple[str, ...]] = {}
        self.indexes_of: dict[str, list[IndexDef]] = {}
        self.index_names: set[str] = set()

    def _readline(self) -> bytes | None:
        line = self.f.readline(DUMP_LINE_MAX_BYTES + 1)
        if not line:
            return None
        self.lineno += 1
        if len(line) > DUMP_LINE_MAX_BYTES:
            raise DumpFormatError(self.lineno, f"a line longer than {DUMP_LINE_MAX_BYTES} "
                                               f"bytes")
        if not line.endswith(b"\n"):
            raise DumpFormatError(self.lineno, "the file ends in the middle of a line (a "
                                               "truncated dump)")
        return line[:-1]

    def _text(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DumpFormatError(self.lineno, f"not valid UTF-8 at byte {exc.start}") from None

    def run(self) -> _Plan:
        first = self._readline()
        if first is None or first.rstrip(b"\r") != FORMAT_LINE.encode():
            shown = "an empty file" if first is None else repr(first[:60])
            raise DumpFormatError(1, f"not a Slonik dump: the first line must be "
                                     f"{FORMAT_LINE!r}, found {shown}")
        footer = False
        statement: list[str] = []
        start = 0
        quote = ""                        # the quote character a statement is inside
        while (raw := self._readline()) is not None:
            text = self._text(raw)
            if footer and text.strip():
                raise DumpFormatError(self.lineno, "text after the dump's last line "
                                                   f"{FOOTER_LINE!r}")
            if not statement:
                stripped = text.strip()
                if not stripped:
                    continue
                if stripped.startswith("--"):
                    if stripped == KV_MARKER:
                        self.kv_marker_line = self.lineno
                    elif stripped == FOOTER_LINE:
                        footer = True
                    continue
                start = self.lineno
            statement.append(text)
            if len(statement) > STATEMENT_MAX_LINES:
                raise DumpFormatError(start, f"a statement longer than {STATEMENT_MAX_LINES} "
                                             f"lines")
            for ch in text:
                if quote:
                    quote = "" if ch == quote else quote   # a doubled quote toggles back
                elif ch in "\"'":
                    quote = ch
            if not quote and text.rstrip().endswith(";"):
                self._statement("\n".join(statement), start)
                statement = []
        if statement:
            raise DumpFormatError(start, "the file ends inside a statement (a truncated dump)")
        if not footer:
            raise DumpFormatError(self.lineno, f"the dump has no last line {FOOTER_LINE!r}: "
                                               f"it is truncated")
        if self.kv_marker_line:
            raise DumpFormatError(self.kv_marker_line, f"{KV_MARKER!r} is not followed by a "
                                                       f"CREATE TABLE")
        plan = self.plan
        for name, rdef in plan.relations.items():
            plan.relations[name] = RelationDef(rdef.name, rdef.kind, rdef.columns,
                                               self.pk_of.get(name, ()),
                                               tuple(self.indexes_of.get(name, ())))
        return plan

    def _statement(self, text: str, line: int) -> None:
        t = _Tokens(text, line)
        if self.kv_marker_line and not (t.peek_word("CREATE") and len(t.tokens) > 1
                                        and t.tokens[1][1].upper() == "TABLE"):
            raise DumpFormatError(self.kv_marker_line, f"{KV_MARKER!r} is not followed by a "
                                                       f"CREATE TABLE")
        head = t.word("SET", "SELECT", "CREATE", "COPY", "ALTER", "COMMENT")
        if head == "SET":
            self._set(t)
        elif head == "SELECT":
            if "set_config('search_path', '', false)" not in text:
                raise DumpFormatError(line, "the only SELECT in a dump sets search_path")
        elif head == "CREATE":
            if t.peek_word("TABLE"):
                self._create_table(t)
            else:
                self._create_index(t)
        elif head == "COPY":
            self._copy(t)
        elif head == "ALTER":
            self._primary_key(t)
        else:
            self._comment(t)

    def _set(self, t: _Tokens) -> None:
        name = t.ident()
        if t.peek_punct("="):
            t.punct("=")
        else:
            t.word("TO")
        kind, value = t.tokens[t.pos] if t.pos < len(t.tokens) else ("", "")
        t.pos += 1
        t.end()
        if name == "client_encoding" and value.upper().replace("-", "") != "UTF8":
            raise DumpFormatError(t.line, f"client_encoding {value!r}: a dump is UTF8")
        if name == "standard_conforming_strings" and value.lower() != "on":
            raise DumpFormatError(t.line, "standard_conforming_strings must be on")

    def _create_table(self, t: _Tokens) -> None:
        t.word("TABLE")
        name = t.relation()
        t.punct("(")
        columns: list[tuple[str, str]] = []
        while True:
            col = t.ident()
            words = []
            while t.pos < len(t.tokens) and t.tokens[t.pos][0] == "word" \
                    and not t.peek_word("NOT"):
                words.append(t.tokens[t.pos][1].lower())
                t.pos += 1
            typ = _TYPE_NAMES.get(" ".join(words))
            if typ is None:
                raise DumpFormatError(t.line, f"column {col!r} of {name!r}: type "
                                              f"{' '.join(words)!r} is not one of "
                                              f"{', '.join(PG_TYPES.values())}")
            if t.peek_word("NOT"):
                t.word("NOT")
                t.word("NULL")
            if col in dict(columns):
                raise DumpFormatError(t.line, f"column {col!r} of {name!r} appears twice")
            columns.append((col, typ))
            if t.peek_punct(","):
                t.punct(",")
                continue
            t.punct(")")
            break
        t.end()
        if name in self.plan.relations:
            raise DumpFormatError(t.line, f"relation {name!r} is created twice")
        kind = "kv" if self.kv_marker_line else "table"
        self.kv_marker_line = 0
        if kind == "kv" and tuple(columns) != KV_COLUMNS:
            raise DumpFormatError(t.line, f"KV store {name!r} must have the columns (key "
                                          f"bytea, value bytea), not {columns}")
        self.plan.relations[name] = RelationDef(name, kind, tuple(columns))

    def _known(self, t: _Tokens, name: str) -> RelationDef:
        rdef = self.plan.relations.get(name)
        if rdef is None:
            raise DumpFormatError(t.line, f"relation {name!r} was not created earlier in "
                                          f"the dump")
        return rdef

    def _columns_of(self, t: _Tokens, rdef: RelationDef, names: Sequence[str]) -> None:
        for n in names:
            if n not in rdef.column_names:
                raise DumpFormatError(t.line, f"{rdef.name!r} has no column {n!r} (columns: "
                                              f"{', '.join(rdef.column_names)})")

    def _create_index(self, t: _Tokens) -> None:
        unique = t.peek_word("UNIQUE")
        if unique:
            t.word("UNIQUE")
        t.word("INDEX")
        index = t.ident()
        t.word("ON")
        rdef = self._known(t, t.relation())
        if t.peek_word("USING"):
            t.word("USING")
            t.word("BTREE")
        cols = t.ident_list()
        t.end()
        self._columns_of(t, rdef, cols)
        if rdef.kind == "kv":
            raise DumpFormatError(t.line, f"an index on KV store {rdef.name!r}")
        if index in self.index_names:
            raise DumpFormatError(t.line, f"index {index!r} is created twice")
        self.index_names.add(index)
        self.indexes_of.setdefault(rdef.name, []).append(IndexDef(index, cols, unique))

    def _primary_key(self, t: _Tokens) -> None:
        t.word("TABLE")
        if t.peek_word("ONLY"):
            t.word("ONLY")
        rdef = self._known(t, t.relation())
        t.word("ADD")
        if t.peek_word("CONSTRAINT"):
            t.word("CONSTRAINT")
            t.ident()
        t.word("PRIMARY")
        t.word("KEY")
        cols = t.ident_list()
        t.end()
        self._columns_of(t, rdef, cols)
        if rdef.name in self.pk_of:
            raise DumpFormatError(t.line, f"{rdef.name!r} gets a second primary key")
        if rdef.kind == "kv" and cols != ("key",):
            raise DumpFormatError(t.line, f"KV store {rdef.name!r}: the primary key is "
                                          f"(key), not {cols}")
        self.pk_of[rdef.name] = cols

    def _comment(self, t: _Tokens) -> None:
        t.word("ON")
        t.word("TABLE")
        self._known(t, t.relation())
        t.word("IS")
        t.string()
        t.end()

    def _copy(self, t: _Tokens) -> None:
        rdef = self._known(t, t.relation())
        names = t.ident_list()
        t.word("FROM")
        t.word("STDIN")
        t.end()
        if rdef.name in self.copied:
            raise DumpFormatError(t.line, f"a second COPY into {rdef.name!r}")
        self.copied.add(rdef.name)
        if sorted(names) != sorted(rdef.column_names) or len(set(names)) != len(names):
            raise DumpFormatError(t.line, f"COPY into {rdef.name!r} names the columns "
                                          f"{list(names)}; the table has "
                                          f"{list(rdef.column_names)}")
        columns = [(n, dict(rdef.columns)[n]) for n in names]
        order = [names.index(n) for n in rdef.column_names]
        previous_key = None
        rows = 0
        while True:
            raw = self._readline()
            if raw is None:
                raise DumpFormatError(self.lineno, f"the file ends inside the COPY into "
                                                   f"{rdef.name!r} (no \\. line)")
            if raw == b"\\.":
                break
            if b"\r" in raw:
                raise DumpFormatError(self.lineno, "a raw carriage return in COPY data "
                                                   "(it is written as \\r; PostgreSQL would "
                                                   "take it for the end of the line)")
            try:
                values = parse_copy_line(raw, columns)
            except ValueError as exc:
                raise DumpFormatError(self.lineno, f"COPY into {rdef.name!r}: {exc}") from None
            row = tuple(values[i] for i in order)
            if rdef.kind == "kv":
                key, value = row
                if key is None or value is None:
                    raise DumpFormatError(self.lineno, f"KV store {rdef.name!r}: a NULL "
                                                       f"{'key' if key is None else 'value'}")
                if previous_key is not None and key <= previous_key:
                    raise DumpFormatError(self.lineno, f"KV store {rdef.name!r}: key "
                                                       f"{key[:40]!r} does not follow "
                                                       f"{previous_key[:40]!r} in ascending "
                                                       f"order (a key twice, or out of order)")
                previous_key = key
            rows += 1
            if self.on_row is not None:
                self.on_row(rdef.name, row)
        self.plan.rows[rdef.name] = rows


def validate_dump(f: BinaryIO) -> _Plan:
    """Read the whole dump (the validating pass) and return its plan; writes nothing.
    ``DumpFormatError`` naming the first bad line."""
    return _DumpReader(f).run()


# --- load -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadSummary:
    path: str
    relations: tuple[tuple[str, str, int], ...]   # (name, kind, rows)

    @property
    def rows(self) -> int:
        return sum(n for _name, _kind, n in self.relations)


def _supports(plan: _Plan) -> None:
    """``LoadError`` before anything is written when the dump needs a feature this
    engine's public API lacks (primary keys and indexes on tables)."""
    wants_pk = [n for n, r in plan.relations.items() if r.kind == "table" and r.primary_key]
    wants_index = [n for n, r in plan.relations.items() if r.indexes]
    if wants_pk and "primary_key" not in inspect.signature(Database.create_table).parameters:
        raise LoadError(f"the dump gives tables primary keys ({', '.join(wants_pk)}), which "
                        f"this version of Slonik cannot create; nothing was written")
    if wants_index and not hasattr(Table, "create_index"):
        raise LoadError(f"the dump gives tables indexes ({', '.join(wants_index)}), which "
                        f"this version of Slonik cannot create; nothing was written")


def _offline_relations(path: str, io_method: str) -> list[str] | None:
    """The relation names of a closed, cleanly shut down database read without opening it
    (None when that cannot be said so: it is open, or needs recovery)."""
    try:
        _check_not_open(path)
        control = read_control(path)
        visibility = shutdown_visibility(path, control)
    except (DatabaseLockedError, RecoveryNeededError):
        return None
    with Aio(io_method) as aio:
        return list(visible_relations(RelationFileReader(path, aio, control.segment_size),
                                      visibility))


def _refuse_non_empty(path: str, names: Sequence[str]) -> None:
    if names:
        raise LoadError(f"database {path} is not empty: it holds {', '.join(sorted(names))}; "
                        f"load reads a dump into an empty database only (nothing was written)")


class _Writer:
    """The writing pass: rows into the relations the plan created, in transactions of
    ``LOAD_BATCH_ROWS``."""

    def __init__(self, db: Database, stores: dict[str, object]) -> None:
        self.db = db
        self.stores = stores
        self.pending: list[tuple] = []
        self.pending_name: str | None = None
        self.txn = None

    def row(self, name: str, row: tuple) -> None:
        if name != self.pending_name:
            self.flush()
            self.pending_name = name
        self.pending.append(row)
        if len(self.pending) >= LOAD_BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        store = self.stores[self.pending_name]
        with self.db.transaction():
            if isinstance(store, Table):
                store.insert_many(self.pending)
            else:
                for key, value in self.pending:
                    store[key] = value
        self.pending = []


def _create(db: Database, rdef: RelationDef):
    if rdef.kind == "kv":
        return db.kv(rdef.name)
    if rdef.primary_key:
        pk = rdef.primary_key[0] if len(rdef.primary_key) == 1 else list(rdef.primary_key)
        return db.create_table(rdef.name, list(rdef.columns), primary_key=pk)
    return db.create_table(rdef.name, list(rdef.columns))


def load_database(path: str | os.PathLike, dump_path: str | os.PathLike,
                  **settings: object) -> LoadSummary:
    """Load the dump at ``dump_path`` into the empty database at ``path`` (opened with
    ``settings``); see the module docstring. Raises ``DumpFormatError`` (a bad file),
    ``LoadError`` (a non-empty database, a missing feature) before writing anything."""
    path = require_database(path)
    with open(dump_path, "rb") as f:
        plan = validate_dump(f)
        _supports(plan)
        method = settings.get("io_method", "auto")
        names = _offline_relations(path, method if isinstance(method, str) else "auto")
        if names is not None:
            _refuse_non_empty(path, names)
        with Database.open(path, **settings) as db:
            _refuse_non_empty(path, list(db.relations()))   # authoritative, under the lock
            stores: dict[str, object] = {}
            try:
                for rdef in plan.relations.values():
                    stores[rdef.name] = _create(db, rdef)
                writer = _Writer(db, stores)
                f.seek(0)
                _DumpReader(f, writer.row).run()
                writer.flush()
                for rdef in plan.relations.values():
                    for index in rdef.indexes:
                        stores[rdef.name].create_index(index.name, list(index.columns),
                                                       unique=index.unique)
            except BaseException as exc:
                try:
                    _drop_all(db, stores)
                except BaseException as undo:
                    exc.add_note(f"the relations this load created could not be dropped "
                                 f"again: {undo}")
                raise
    return LoadSummary(path, tuple((r.name, r.kind, plan.rows.get(r.name, 0))
                                   for r in plan.relations.values()))


def _drop_all(db: Database, stores: dict[str, object]) -> None:
    """Undo a failed load: drop every relation it created, in one transaction."""
    if not stores or db.closed:
        return
    with db.transaction():
        for name in stores:
            db.drop(name)

