"""What the dispatcher keeps in Redis: key names, the dedupe ledger, failures, RQ internals.

Shared by every process; imports nothing from the process packages."""
