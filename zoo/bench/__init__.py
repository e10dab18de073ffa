"""``zoo bench``: throughput, MFU, compile time, memory and scaling, side by side with PyTorch.

Every benchmark is a :class:`~zoo.bench.catalog.Case` (a zoo family, its config, a batch size)
trained on one synthetic batch, placed once by the strategy as ``zoo train`` places its batches.
For each case and strategy the harness builds the train step as ``zoo train`` does and compiles it
ahead of time (lower and compile timed apart), then times single steps with ``block_until_ready``;
the PyTorch peer of the same model (:mod:`zoo.bench.peers`, needs ``pip install 'zoo[bench]'``)
runs in the same process, its steps alternating with zoo's in rounds, so both see the same machine.

FLOPs: the family's own count (``Family.flops_per_example``), XLA's ``cost_analysis`` beside it
(the ratio is reported), and a jaxpr count where the family has none. MFU is against a table of
dense peak FLOP/s by device kind, and beside it the fraction of a peak measured in the same run
(a large matmul on the same device).

Modules: :mod:`~zoo.bench.catalog` (the cases), :mod:`~zoo.bench.hardware` (peaks, environment),
:mod:`~zoo.bench.timing`, :mod:`~zoo.bench.zoo_runner` and :mod:`~zoo.bench.peer_runner`,
:mod:`~zoo.bench.suites` (:func:`~zoo.bench.suites.run_suite`, sweeps, workers),
:mod:`~zoo.bench.report` and :mod:`~zoo.bench.cli`. ``bench_main(argv)`` is the command line
(``zoo bench``, ``python -m zoo.bench``). Importing this package imports neither JAX's backend,
torch nor TensorFlow.
"""

from zoo.bench.cli import main as bench_main

__all__ = ["bench_main"]
