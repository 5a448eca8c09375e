"""matplotlib, loaded lazily and headless; plots need the 'bench' extra, results do not."""

from __future__ import annotations

import sys


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or None (with a note) when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'exotune[bench]'): no plots written", file=sys.stderr)
        return None
    return plt
