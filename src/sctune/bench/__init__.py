"""``sctune bench``: cross-model PEFT benchmarking with shared splits, baselines and statistics.

A *grid* file names backbones (each a base recipe), methods (adapter sections with per-method
overrides), datasets, tasks and seeds. :func:`sctune.bench.runner.run_bench` expands it into one
validated recipe per cell, writes one split per dataset and seed that every cell and every
baseline reads (``data.split.file``), runs the cells (in child processes, ``jobs`` at a time,
one per GPU when several are visible), computes the baselines on the same splits, and writes
the statistics and the report (:mod:`sctune.bench.report`).

Modules: :mod:`~sctune.bench.spec` (the grid schema, validation and expansion),
:mod:`~sctune.bench.runner` (splits, cells, resume, progress), :mod:`~sctune.bench.baselines`,
:mod:`~sctune.bench.stats` and :mod:`~sctune.bench.report`. Unlike :mod:`sctune.core`, this
package computes metrics and may import task plugins and scikit-learn, scipy, scib-metrics.
"""

from __future__ import annotations
