"""Parts of ``benchmarks/scaling.py``: the child process that measures one setting."""
