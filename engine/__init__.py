"""Slonik's engine: the public API of DESIGN §6 (Database, transactions, KV store, tables)
and the ``slonik`` command.

Module map:
- cli.py   the ``slonik`` command (argparse); subcommands grow with the engine
"""

from aio.errors import ConflictError, DataCorruptionError, SlonikError

__all__ = ["ConflictError", "DataCorruptionError", "SlonikError"]
