"""Adapters for frameworks that already know when and what to log (each module imports its framework)."""
