"""userip: UserIP-Tuning as a pipeline. Shared pieces: config model, errors, CLI."""

__version__ = "0.1.0"
