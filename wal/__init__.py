"""Slonik's write-ahead log, after PostgreSQL's (DESIGN §4, §7). See README.md.

Module map:
- errors.py      WalError, the root of this layer's errors
- lsn.py         LSN text form "%X/%08X": format_lsn / parse_lsn
- walpage.py     WAL page header codec and LSN arithmetic (pure)
- record.py      the record codec: header, block references, full-page images, CRC-32C (pure)
- rmgr.py        the one table of resource manager ids and names (RMGR_TABLE, rmgrlist.h);
                 install_rmgrs binds the engine's managers (redo, describe) explicitly
- checkpoint.py  checkpoint record payload and the xlog rmgr (bound by the engine's table)
- xlog.py        the writer: insert into WAL buffers, flush (stamped pages) through AIO, group commit
- walwriter.py   the background WAL writer thread: flushes asynchronous commits every delay
- reader.py      read records back across pages and segments; where valid WAL ends, and why
                 (torn tail, or corruption in the middle proven by a flush stamp)
- control.py     the control file slonik_control: codec, atomic replace

Nothing here imports storage/ or engine/; xlog is not imported by this package on purpose
(it pulls in aio.core), so the pure modules stay cheap to import.
"""
