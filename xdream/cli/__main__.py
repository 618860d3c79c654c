import sys

from xdream.cli import main

sys.exit(main())
