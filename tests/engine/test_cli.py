"""The data commands of ``slonik`` (init, put, get, scan, stats, check) through
``engine.cli.main`` and, for the no-traceback promise, as a real subprocess."""

import argparse
import json
import os
import subprocess
import sys

import pytest
from slonik.engine.tools.cli import build_parser, main

from slonik import Database


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def db_dir(tmp_path, io_method, capsys):
    path = tmp_path / "db"
    code, out, _err = run(capsys, "init", path, "wal_segment_size=1MB", "segment_size=1024",
                          "--io-method", io_method)
    assert code == 0 and "initialized a Slonik database" in out
    return path


def _tree(path):
    """(relative path, size) of every file under ``path``: "nothing was changed" checks."""
    out = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            out.append((os.path.relpath(full, path), os.path.getsize(full)))
    return sorted(out)


def test_init_put_get_round_trip(db_dir, io_method, capsys):
    """init records the creation settings; put then get returns the UTF-8 value exactly,
    and the value is there for the engine too after the commands closed the database."""
    assert run(capsys, "put", db_dir, "users", "alice", "hello wörld",
               "--io-method", io_method)[0] == 0
    code, out, err = run(capsys, "get", db_dir, "users", "alice", "--io-method", io_method)
    assert (code, out, err) == (0, "hello wörld\n", "")
    with Database.open(db_dir, io_method=io_method) as db:
        assert db.kv("users")[b"alice"] == "hello wörld".encode()
        assert db.settings.wal_segment_size == 1 << 20 and db.settings.segment_size == 1024


def test_hex_keys_and_values(db_dir, capsys):
    """--hex takes and prints hexadecimal, so binary keys and values pass through; a
    non-hex argument is refused with exit 1."""
    assert run(capsys, "put", db_dir, "bin", "00ff", "0a0b0c", "--hex")[0] == 0
    assert run(capsys, "get", db_dir, "bin", "00ff", "--hex")[:2] == (0, "0a0b0c\n")
    code, out, err = run(capsys, "scan", db_dir, "bin", "--hex")
    assert (code, out) == (0, "00ff\t0a0b0c\n")
    code, _out, err = run(capsys, "put", db_dir, "bin", "zz", "00", "--hex")
    assert code == 1 and "KEY is not hexadecimal" in err


def test_get_missing_key_and_store(db_dir, capsys):
    """A missing key is exit 1 with one line naming it; a missing store is exit 1 naming
    it and the stores there are, and is not created by the lookup."""
    run(capsys, "put", db_dir, "users", "alice", "1")
    code, out, err = run(capsys, "get", db_dir, "users", "bob")
    assert (code, out) == (1, "")
    assert err == "slonik get: key 'bob' not found in store 'users'\n"
    code, out, err = run(capsys, "get", db_dir, "nosuch", "bob")
    assert code == 1 and out == ""
    assert err == (f"slonik get: no KV store named 'nosuch' in {db_dir} (stores: users)\n")
    code, _out, err = run(capsys, "scan", db_dir, "nosuch")
    assert code == 1 and "no KV store named 'nosuch'" in err
    with Database.open(db_dir) as db:
        assert db.relations() == {"users": "kv"}


def test_scan_options(db_dir, capsys):
    """scan prints KEY<TAB>VALUE in key order; --start (inclusive), --stop (exclusive),
    --reverse and --limit select as KVStore.items does; --json is a JSON array."""
    for k in ["d", "a", "c", "b", "e"]:
        run(capsys, "put", db_dir, "s", k, k.upper())
    assert run(capsys, "scan", db_dir, "s")[1] == "a\tA\nb\tB\nc\tC\nd\tD\ne\tE\n"
    assert run(capsys, "scan", db_dir, "s", "--start", "b", "--stop", "d")[1] == "b\tB\nc\tC\n"
    assert run(capsys, "scan", db_dir, "s", "--reverse", "--limit", "2")[1] == "e\tE\nd\tD\n"
    code, out, _ = run(capsys, "scan", db_dir, "s", "--json", "--start", "c")
    assert code == 0
    assert json.loads(out) == [{"key": k, "value": k.upper()} for k in "cde"]
    code, out, _ = run(capsys, "scan", db_dir, "s", "--json", "--start", "x")
    assert (code, json.loads(out)) == (0, [])


def test_stats_text_and_json(db_dir, io_method, capsys):
    """stats names the io method in use and prints the pg_stat_io-like table and the
    relations; --json carries the same DatabaseStats fields."""
    run(capsys, "put", db_dir, "users", "alice", "1")
    code, out, _ = run(capsys, "stats", db_dir, "--io-method", io_method)
    assert code == 0
    assert out.startswith(f"io_method: {io_method}\n")
    assert "target/op" in out and "relation/readv" in out
    assert "users" in out and "kv" in out
    code, out, _ = run(capsys, "stats", db_dir, "--io-method", io_method, "--json")
    report = json.loads(out)
    assert code == 0 and report["io_method"] == io_method
    assert report["aio"]["io_method"] == io_method
    assert {"buffers", "wal", "checkpointer", "transactions", "relations"} <= set(report)
    assert [r["name"] for r in report["relations"]] == ["users"]


def test_settings_through_dash_c(db_dir, capsys):
    """-c NAME=VALUE passes a setting to Database.open; a bad one is exit 1 naming it."""
    assert run(capsys, "put", db_dir, "u", "k", "v", "-c", "shared_buffers=4MB",
               "-c", "synchronous_commit=off")[0] == 0
    code, _out, err = run(capsys, "get", db_dir, "u", "k", "-c", "shared_buffers=1")
    assert code == 1 and "shared_buffers" in err and err.count("\n") == 1
    code, _out, err = run(capsys, "get", db_dir, "u", "k", "-c", "no_such_setting=1")
    assert code == 1 and "unknown setting 'no_such_setting'" in err


def test_not_a_database_is_refused_unchanged(tmp_path, capsys):
    """Every data command refuses a directory without slonik_control, and a path that
    does not exist, with exit 1 and one clear line; nothing is created or written."""
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8 not a database")
    before = _tree(other)
    missing = tmp_path / "nothing-here"
    for argv in (["put", "{d}", "s", "k", "v"], ["get", "{d}", "s", "k"], ["scan", "{d}", "s"],
                 ["del", "{d}", "s", "k"], ["stats", "{d}"], ["check", "{d}"]):
        code, out, err = run(capsys, *[a.replace("{d}", str(other)) for a in argv])
        assert code == 1 and out == ""
        assert err == (f"slonik {argv[0]}: {other} is not a Slonik database (it has no "
                       f"slonik_control); nothing was changed\n")
        code, out, err = run(capsys, *[a.replace("{d}", str(missing)) for a in argv])
        assert code == 1 and f"no database at {missing}" in err
        assert not missing.exists()
    assert _tree(other) == before
    code, _out, err = run(capsys, "init", other)
    assert code == 1 and "is not a Slonik database" in err
    assert _tree(other) == before


def test_init_refusals(db_dir, tmp_path, capsys):
    """init of an existing database, or with a bad setting, is exit 1 and changes nothing
    (a bad setting leaves no directory behind)."""
    before = _tree(db_dir)
    code, _out, err = run(capsys, "init", db_dir)
    assert code == 1 and "already a Slonik database" in err
    assert _tree(db_dir) == before
    new = tmp_path / "new"
    code, _out, err = run(capsys, "init", new, "io_workers=many")
    assert code == 1 and "io_workers" in err
    code, _out, err = run(capsys, "init", new, "wal_segment_size=3MB")
    assert code == 1 and "wal_segment_size" in err
    assert not new.exists()


def test_put_into_a_table_is_refused(db_dir, capsys):
    """A STORE that names a table is exit 1 saying so."""
    with Database.open(db_dir) as db:
        db.create_table("events", [("id", "int8")])
    code, _out, err = run(capsys, "put", db_dir, "events", "k", "v")
    assert code == 1 and err == "slonik put: 'events' is a table, not a KV store\n"


def test_locked_database_is_a_one_line_error_in_a_subprocess(tmp_path):
    """Run as a real command: a database open elsewhere gives exit 1 and one stderr line
    naming the lock, with no traceback."""
    path = tmp_path / "db"
    with Database.open(path, io_method="sync"):
        proc = subprocess.run([sys.executable, "-m", "slonik.engine.tools.cli", "get", str(path), "s", "k"],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("slonik get: database ") and "already open" in proc.stderr
    assert proc.stderr.count("\n") == 1


def _damage_block(path, relfilenumber, block):
    """Flip one byte in the middle of ``block`` of a relation's first segment file."""
    seg = os.path.join(path, "base", str(relfilenumber))
    with open(seg, "r+b") as f:
        f.seek(block * 8192 + 4000)
        byte = f.read(1)
        f.seek(block * 8192 + 4000)
        f.write(bytes([byte[0] ^ 0x40]))


def test_check_clean_and_corrupt(db_dir, io_method, capsys):
    """check exits 0 on a clean database; after one byte of a KV heap block is flipped on
    disk it exits 1 and names that block (relation and block number), as text and JSON."""
    with Database.open(db_dir, io_method=io_method) as db:
        kv = db.kv("users")
        with db.transaction():
            for i in range(3000):
                kv[b"user%06d" % i] = b"x" * 100
        rel = kv.rel
        nblocks = kv.nblocks()
    assert nblocks > 3
    code, out, _err = run(capsys, "check", db_dir, "--io-method", io_method)
    assert code == 0, out
    assert "no corrupt blocks found" in out
    _damage_block(db_dir, rel, 2)
    code, out, _err = run(capsys, "check", db_dir, "--io-method", io_method)
    assert code == 1
    corrupt = [line for line in out.splitlines() if line.startswith("corrupt block")]
    assert len(corrupt) == 1
    assert corrupt[0].startswith(f"corrupt block: relation 'users' (relfilenumber {rel}, "
                                 f"main fork) block 2: ")
    assert "1 corrupt block found" in out
    code, out, _err = run(capsys, "check", db_dir, "--io-method", io_method, "--json")
    assert code == 1
    report = json.loads(out)
    blocks = report["corrupt_blocks"]
    assert len(blocks) == 1
    assert blocks[0]["block"] == 2 and blocks[0]["relfilenumber"] == rel
    assert blocks[0]["relation"] == "users" and report["ok"] is False


def test_del_removes_a_key(db_dir, io_method, capsys):
    """del removes one key (get then misses it, the engine agrees); a missing key or store
    is exit 1 with one line naming it, and --hex takes a hexadecimal key."""
    for k in ("a", "b"):
        run(capsys, "put", db_dir, "s", k, k.upper())
    assert run(capsys, "del", db_dir, "s", "a", "--io-method", io_method)[:2] == (0, "")
    assert run(capsys, "get", db_dir, "s", "a")[0] == 1
    code, _out, err = run(capsys, "del", db_dir, "s", "a")
    assert code == 1
    assert err == "slonik del: key 'a' not found in store 's'; nothing was changed\n"
    code, _out, err = run(capsys, "del", db_dir, "nosuch", "a")
    assert code == 1 and "no KV store named 'nosuch'" in err
    assert run(capsys, "del", db_dir, "s", b"b".hex(), "--hex")[0] == 0
    with Database.open(db_dir, io_method=io_method) as db:
        assert dict(db.kv("s").items()) == {}


def test_scan_of_a_table_prints_its_rows(db_dir, io_method, capsys):
    """scan of a table prints every row in COPY text format (tab-separated, \\N for NULL,
    bytea as \\\\x hex, t/f, backslash escapes) and, with --json, one object per row keyed
    by column; --limit applies; KV-only options are refused with exit 1."""
    rows = [(1, "one", b"\x00\xff", True, 1.5), (2, "tab\there", None, False, -2.0),
            (3, None, b"", None, None)]
    with Database.open(db_dir, io_method=io_method) as db:
        t = db.create_table("events", [("id", "int8"), ("name", "text"), ("payload", "bytea"),
                                       ("ok", "bool"), ("score", "float8")])
        with db.transaction():
            for row in rows:
                t.insert(row)
    code, out, err = run(capsys, "scan", db_dir, "events", "--io-method", io_method)
    assert (code, err) == (0, "")
    assert sorted(out.splitlines()) == ["1\tone\t\\\\x00ff\tt\t1.5",
                                        "2\ttab\\there\t\\N\tf\t-2.0",
                                        "3\t\\N\t\\\\x\t\\N\t\\N"]
    code, out, _ = run(capsys, "scan", db_dir, "events", "--json")
    assert code == 0
    assert sorted(json.loads(out), key=lambda r: r["id"]) == [
        {"id": 1, "name": "one", "payload": "\\x00ff", "ok": True, "score": 1.5},
        {"id": 2, "name": "tab\there", "payload": None, "ok": False, "score": -2.0},
        {"id": 3, "name": None, "payload": "\\x", "ok": None, "score": None}]
    code, out, _ = run(capsys, "scan", db_dir, "events", "--limit", "2")
    assert code == 0 and len(out.splitlines()) == 2
    code, out, err = run(capsys, "scan", db_dir, "events", "--start", "1")
    assert code == 1 and out == "" and "'events' is a table" in err


def _walk(parser: argparse.ArgumentParser, path: str):
    """(where, action) for every action of ``parser`` and of every subcommand under it."""
    for action in parser._actions:
        yield path, action
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield f"{path} {choice.dest}", choice
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")


def test_every_argument_of_every_subcommand_has_help():
    """Walk the whole argparse tree (every subcommand, every bench): each argument, option
    and subcommand has non-empty help text, so --help documents everything."""
    seen = [(where, action) for where, action in _walk(build_parser(), "slonik")]
    missing = [f"{where}: {action.dest}" for where, action in seen
               if not action.help or action.help == argparse.SUPPRESS]
    assert missing == []
    subcommands = {where for where, _ in seen}
    assert {"slonik del", "slonik scan", "slonik check", "slonik bench wal",
            "slonik waldump", "slonik controldata"} <= subcommands


def _big_database(path, io_method: str) -> None:
    """A database with 3,000 KV pairs: far more output than a pipe buffer (64 KiB) holds."""
    with Database.open(path, io_method=io_method) as db:
        kv = db.kv("s")
        with db.transaction():
            for i in range(3000):
                kv[b"key%06d" % i] = b"value %06d " % i * 4


@pytest.mark.parametrize("argv", [["waldump"], ["scan", "s"], ["scan", "s", "--json"]])
def test_a_closed_pipe_is_quiet(tmp_path, argv):
    """``slonik waldump DIR | head -1`` for real: the command's stdout is a pipe whose
    reader takes one line and closes it while the command still has more than a pipe
    buffer to write. The command ends with exit 1 (the Python docs' way for EPIPE) and
    writes nothing to stderr: no traceback, no "Broken pipe", no "Exception ignored"."""
    path = tmp_path / "db"
    _big_database(path, "sync")
    slonik = os.path.join(os.path.dirname(sys.executable), "slonik")
    proc = subprocess.Popen([slonik, argv[0], str(path), *argv[1:]], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 1
    assert first and err == ""
