"""The state of a directory tree, for "nothing on disk was changed" checks."""

from __future__ import annotations

import hashlib
import os


def dir_state(path: str | os.PathLike) -> dict[str, tuple]:
    """Every entry under ``path``: a file's size, mtime (ns) and SHA-256 of its bytes; a
    directory's mtime (a file created and removed again changes it)."""
    out = {".": ("dir", os.stat(path).st_mtime_ns)}
    for root, dirs, files in os.walk(path):
        for name in dirs:
            p = os.path.join(root, name)
            out[os.path.relpath(p, path)] = ("dir", os.stat(p).st_mtime_ns)
        for name in files:
            p = os.path.join(root, name)
            st = os.stat(p)
            with open(p, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(p, path)] = ("file", st.st_size, st.st_mtime_ns, digest)
    return out
