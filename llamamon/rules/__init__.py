"""Alert rules: the condition language, the built-in rules, and two evaluators held to one contract (history:
``history.replay``; live: ``instant.step_at`` stepping ``states.AlertStates``).

Rules only decide: data comes in as a polars frame, AlertEvents go out. This package must not import
llamamon.store, llamamon.channels, llamamon.collectors or llamamon.cli, and never opens a file.
"""
