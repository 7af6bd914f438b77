"""Collectors: they read the machine, the recorded process tree and the GPUs, and return samples.

The rule that keeps them small and fast: a collector only collects. Modules in this package must not
import ``llamamon.store``, ``llamamon.rules``, ``llamamon.channels``, ``llamamon.report`` or
``llamamon.cli``, nor polars, pyarrow or matplotlib; they may import the leaf modules (``catalog``,
``samples``, ``units``, ``errors``), ``llamamon.config``, psutil, and — in ``_nvml.py`` only — pynvml.
How a command opens, ticks and closes them is session.py's; what happens to their rows (journal, Parquet,
rules, Prometheus textfile) is the command's business.

Import the concrete classes from their modules (``llamamon.collectors.system`` …); this package
imports nothing at module level so that ``import llamamon.collectors.base`` stays cheap.
"""
