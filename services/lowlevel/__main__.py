"""Entry point of skiff-lowlevel, an OCI runtime with runc's command line."""

import sys

from services.lowlevel.cli import main

if __name__ == "__main__":
    sys.exit(main())
