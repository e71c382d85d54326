"""The benchmark scripts: one per kernel op (``<op>.py``) plus the model-level ones (gemnet.py,
gemnet_oc.py, train_step.py, vs_jmp.py), all on one harness (``harness.py``: cases, methods, the
check of every method before it is timed, timing, reports), and the suite (``suite.py``) that
``fastcsi bench`` runs, which collects the op scripts' ``cases()``.

This folder is also the package ``fastcsi._bench`` (``fastcsi/_bench`` links here) so that an
installed fastcsi carries the suite; each script still runs on its own: ``python bench/<name>.py``.
"""
