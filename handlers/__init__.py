"""Built-in handler plugins. They use only the public contract in :mod:`dispatcher`.

Each sets ``name`` although the loader would take it from the entry point: the embedded demo
and the tests create them directly, outside the loader.
"""
