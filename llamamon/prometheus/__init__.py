"""Prometheus exposition: text format (render and parse), catalog-aware snapshots, .prom textfiles.

This package formats values it is handed: it must not import llamamon.store, llamamon.collectors or
llamamon.rules internals (only the leaf modules: catalog, samples, units, fsutil, errors).
"""
