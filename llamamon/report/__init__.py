"""``llamamon report``: store -> small tables (data, tables) -> dashboards -> figures (charts) -> one file (render).

Everything here imports polars, matplotlib or jinja2, so it is only ever imported from inside the
``report`` command's callback, never on the ``llamamon --help`` path.
"""
