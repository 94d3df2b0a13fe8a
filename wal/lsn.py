"""LSN text form: ``"%X/%08X"`` (PostgreSQL's), the one way an LSN is printed or parsed.

An LSN is an ``int``, the byte position in the WAL stream counting page headers; 0 is
``INVALID_LSN``. Every message, dump and test that shows an LSN goes through
``format_lsn`` so that the same position always reads the same.
"""

from __future__ import annotations

import re

__all__ = ["INVALID_LSN", "MAX_LSN", "format_lsn", "parse_lsn"]

INVALID_LSN = 0
MAX_LSN = (1 << 64) - 1
_LSN_RE = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def format_lsn(lsn: int) -> str:
    """``0x1002F28`` -> ``"0/01002F28"``."""
    if not 0 <= lsn <= MAX_LSN:
        raise ValueError(f"lsn must be in 0..2**64-1, got {lsn}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:08X}"


def parse_lsn(text: str) -> int:
    """``"0/01002F28"`` -> ``0x1002F28``; ValueError naming the text when it is not an LSN."""
    if not isinstance(text, str):
        raise TypeError(f"parse_lsn needs a str, not {type(text).__name__}")
    m = _LSN_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not an LSN (expected hex 'X/XXXXXXXX'): {text!r}")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)
