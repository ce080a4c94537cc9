"""``python -m xspeckle``: the command line (see :mod:`xspeckle.cli`)."""

import sys

try:
    from xspeckle.cli import main
except KeyboardInterrupt:  # Ctrl-C while the imports are still running: one line, no traceback
    sys.stderr.write("xspeckle: error: interrupted (Ctrl-C)\n")
    sys.exit(130)

if __name__ == "__main__":  # pragma: no cover
    main()
