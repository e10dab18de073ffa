"""zoo's benchmarks: ``python benchmarks/run.py`` (same as ``zoo bench``) and the PyTorch peers."""
