"""Parts of ``benchmarks/hypergrad.py``: cost study, unrolled-error study, plot."""
