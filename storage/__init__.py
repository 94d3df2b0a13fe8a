"""Slonik's storage layer: page format, smgr over md-style segment files, fd cache.

Module map:
- page.py    the 8 KiB page: header, line pointers, items, checksums (pure, no I/O)
- fdcache.py bounded LRU cache of open file descriptors, reopening transparently
- smgr.py    storage manager: relation forks as segment files base/<relfilenumber>[.N]
"""
