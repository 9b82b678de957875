"""`python -m vlstack.cli` (and `torchrun ... -m vlstack.cli`): the `vlstack` command."""

import sys

from vlstack.cli import main

sys.exit(main())
