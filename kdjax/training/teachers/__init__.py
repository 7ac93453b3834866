"""Frozen teachers: loaded from workdirs or foreign files (:mod:`._load`), applied in eval
mode inside the step, one architecture's members stacked (:mod:`._apply`), their targets
cached on disk (:mod:`._cache`), and set up from ``config.teacher`` (:mod:`._setup`)."""
