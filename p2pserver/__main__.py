import sys

from p2pserver.cli import main

sys.exit(main())
