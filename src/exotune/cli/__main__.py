"""``python -m exotune.cli`` (torchrun starts ranks this way)."""

import sys

from exotune.cli import main

sys.exit(main())
