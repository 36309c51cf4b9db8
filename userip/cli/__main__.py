"""``python -m userip.cli``: the console script (``torchrun ... -m userip.cli infer`` uses it)."""

import sys

from userip.cli import main

sys.exit(main())
