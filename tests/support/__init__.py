"""Test-only machinery: the crash simulator (an OS layer) and the fault-injecting io
method. Not part of the installed product; both go through the same OS boundary and
method interface as the real thing."""
