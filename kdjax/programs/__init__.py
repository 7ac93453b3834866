"""The programs behind ``kdjax demo``, ``kdjax fuse`` and the sequence example: each one
importable, built on the library (``kdjax.training``, ``kdjax.fusion``), never imported by it."""
