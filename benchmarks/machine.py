"""Machine description shared by the benchmark scripts.

The scripts run as ``python benchmarks/NAME.py``, so this module imports as
``machine``.
"""

from __future__ import annotations

import platform


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (Linux), else ``platform``'s guess."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
