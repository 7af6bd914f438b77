"""Which charts and tables each dashboard shows, built from ``report.data`` tables into a render-ready model.

The model (``model``) holds only strings and ``data:`` URIs, so the templates need no logic beyond loops and
the report can be re-themed with ``--template-dir`` without touching Python. One module per dashboard
(``system``, ``training``, ``inference``); what they share is in ``context``, ``panels``, ``values`` and
``summary``; the alert timeline and the run header, which every report has, in ``alerts`` and ``header``.
"""
