"""``python -m bench [--quick] [--only NAME ...]``: run every benchmark, write RESULTS.md and results.json.

Each figure is measured against its peers and a floor in the same run; each module can also be run
alone (``python bench/overhead.py``, ``python -m bench.read_speed``). Benchmarks are not tests: nothing
here is collected by pytest, and no target is asserted anywhere but in the results table. (``bench`` is
a namespace package on purpose: the scripts in it stay plain scripts.)
"""

from bench.run_all import main

if __name__ == "__main__":
    main()
