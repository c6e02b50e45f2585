"""The crash points live in migrator/crashpoints.py (the archive store has some too, and stores sit
below the engine). This name is that same module, not a copy: tests that set its counters set
the one crash() reads."""

import sys

from migrator import crashpoints
from migrator.crashpoints import crash

__all__ = ["crash"]
sys.modules[__name__] = crashpoints
