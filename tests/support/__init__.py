"""Test-only machinery, not part of the installed product. Each piece goes through the
same OS boundary (``slonik.aio.osfile``) or io method interface as the real thing.

- crashsim.py       an OS layer that simulates a crash: unsynced writes dropped, kept or torn
- method_faulty.py  an io method wrapping another to inject errors, short transfers, delays
- nosync.py         an OS layer whose fsyncs do nothing (the power-cut harness's negative control)
- loopdev.py        the power-cut harness: ext4 on a loop device, image copied at the kill
- dirstate.py       a directory tree's state, for "nothing on disk changed" checks
- redo.py           a stand-in redo context over page copies, for access methods' redo tests
"""
