"""Helpers of ``bench/run.py``: the measurements, the bare-Unicorn floor, the Qiling peer.

``python bench/run.py`` puts ``bench/`` on ``sys.path``, so this package imports as
``smmbench``. If smmemu itself is not importable (not installed, no ``PYTHONPATH``),
the repository root is added so the benchmark measures the working tree.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = BENCH_DIR.parent

if importlib.util.find_spec("smmemu") is None:
    sys.path.insert(0, str(REPO_ROOT))
