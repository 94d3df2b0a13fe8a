"""Tools (``slonik.engine.tools``): everything that uses the engine rather than being it.

- cli.py         the ``slonik`` command
- check.py       offline verification of every page (read-only)
- waltools.py    waldump and controldata (read-only)
- demo.py        ``make demo``; progress.py: progress lines on a terminal
- bench*.py      benchmarks against fio and SQLite measured in the same run
"""
