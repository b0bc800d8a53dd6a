"""``python -m buildtool COMMAND``: the nox sessions call this."""

import sys

from buildtool.cli.main import main

sys.exit(main())
