"""Slonik's write-ahead log (record format, insert, flush, reader, control file).

Arrives with the WAL issue; the package exists so the layer map of DESIGN §1 is in place.
"""
