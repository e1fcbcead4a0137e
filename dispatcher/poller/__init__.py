"""The poller process (``dispatcher poll``): sweeps, the fleet schedule, the registry."""
