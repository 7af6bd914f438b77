"""Stand-ins for things that cannot run here; only NVML qualifies."""
