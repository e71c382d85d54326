"""The benchmark scripts, one per hot path, plus the suite (``suite.py``) that ``fastcsi bench`` runs.

This folder is also the package ``fastcsi._bench`` (``fastcsi/_bench`` links here) so that an
installed fastcsi carries the suite; each script still runs on its own: ``python bench/<name>.py``.
"""
