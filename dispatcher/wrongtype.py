"""Moved to :mod:`dispatcher.store.wrongtype`; this name stays only for dispatcher/cli.py until
it is split into a package (issue 13), then goes."""

from dispatcher.store.wrongtype import describe, find_wrong_types, shared_keys

__all__ = ["describe", "find_wrong_types", "shared_keys"]
