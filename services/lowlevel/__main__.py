"""Entry point of skiff-lowlevel, an OCI runtime with runc's command line.

The fast way to start it is ``python -I -S <this file>``: no ``site`` (about 5 ms a launch) and
no console-script wrapper (pip's imports ``re``, about 13 ms). The folder holding ``services``
is then put on ``sys.path`` by hand.
"""

import gc
import sys

# A process of a few tens of ms creates no garbage worth collecting; the collector's passes cost
# ~2 ms of CPU a run (perf stat -r 30), and in forked children they touch, thus copy, pages.
gc.disable()

if __name__ == "__main__" and __package__ in (None, ""):
    _here = __file__.rsplit("/", 3)[0]
    if _here not in sys.path:
        sys.path.insert(0, _here)

# First of all, before the imports: start the cgroup lock's grace period (see prime.py).
from services.lowlevel.prime import prime_for  # noqa: E402

prime_for(sys.argv[1:])

from services.lowlevel.cli import main  # noqa: E402

if __name__ == "__main__":
    code = main()
    # No interpreter finalization (module teardown, GC): about 5 ms a launch. Nothing is left
    # to run at exit; only the standard streams may hold buffered output.
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        if code == 0:
            code = 1
    import posix

    posix._exit(code)
