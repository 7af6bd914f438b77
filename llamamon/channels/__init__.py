"""Notification channels: Slack, email, webhook and Alertmanager delivery of alert events.

Channels only deliver. This package must not import llamamon.rules, llamamon.store,
llamamon.collectors or llamamon.cli: it receives AlertEvents and returns Deliveries.
"""
