"""Operator views and actions: status snapshot, failed jobs, one order's record."""
