"""Settings for every test collected from the repository root: one thread per process.

The suite runs in two pytest-xdist processes on a 2-core machine (``-n 2``), and many tests start
the CLI in a subprocess. Torch's default of one thread per core would then run four or more busy
threads on two cores, which is many times slower than one thread each (oversubscription).
Set before torch is imported, the variable reaches the workers and every subprocess they start;
a value the caller set is kept.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
