"""`python -m cli`: the `vmsh-scheduler` command from a checkout."""

import sys

from cli.main import main

sys.exit(main())
