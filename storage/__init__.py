"""Slonik's storage layer: page format, smgr over md-style segment files, buffer pool,
read streams.

Module map:
- errors.py       DataCorruptionError (a page that fails verification)
- page.py         the 8 KiB page: header, line pointers, items, checksums (pure, no I/O)
- fdcache.py      bounded LRU cache of open file descriptors, reopening transparently
- smgr.py         storage manager: relation forks as segment files base/<relfilenumber>[.N];
                  its AIO reads/writes (SmgrIo: the smgr target and completion callbacks)
- bufmgr.py       shared buffers: the buffer state machine (BufferState, LEGAL_TRANSITIONS),
                  two-step reads verified in completion, clock sweep, AIO write-back
- read_stream.py  look-ahead reads of many blocks, returned pinned and in order

Imports point down only (storage -> aio); nothing here imports wal or engine.
"""
