"""Tools (``slonik.engine.tools``): everything that uses the engine rather than being it.

- cli.py         the ``slonik`` command
- check.py       verification of every page, read-only (``--recover`` to recover first)
- check_index.py check's comparison of each table index with its heap (amcheck-like)
- waltools.py    waldump and controldata (read-only)
- offline.py     the read-only tools' access to a data directory without a Database:
                 O_RDONLY block reads through an io method, the lock holder, catalog names,
                 the pages WAL replay would restore, the rows of a cleanly shut down database
- dump.py        dump (a SQL script psql loads, read-only) and load (into an empty database)
- demo.py        ``make demo``; progress.py: progress lines on a terminal
- bench*.py      benchmarks against fio and SQLite measured in the same run
                 (bench_replay.py: crash-recovery replay of a built WAL)
- plot.py        ``--plot FILE.png``: a bench's ratios drawn (matplotlib, optional)
- fio.py         the one fio runner the benches share
"""
