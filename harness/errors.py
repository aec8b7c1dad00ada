"""The errors a user can act on, which the CLI prints as one line (no traceback).

They live in this light module so that the CLI can catch them without importing torch or the
stores (a waiting `harness ui` should not hold PyTorch in memory).
"""


class ConfigError(ValueError):
    """An invalid config, study file or command-line setting (exit 2; names the key)."""


class DataError(RuntimeError):
    """MNIST is missing, corrupt or cannot be acquired (exit 1; names the file)."""


class StoreError(RuntimeError):
    """A store that cannot be used as asked (exit 1): read-only, locked, damaged."""
