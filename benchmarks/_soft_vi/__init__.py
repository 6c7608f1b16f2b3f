"""Parts of ``benchmarks/soft_vi_throughput.py``: kernels, measured sections, plot."""
