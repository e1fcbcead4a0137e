"""Built-in handler plugins. They use only the public contract in :mod:`dispatcher`."""
