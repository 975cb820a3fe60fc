"""Builders for test models: each writes one model to ``path``. Used with the ``model_path`` fixture.

Every builder uses real TensorFlow; none downloads anything (``weights=None``).
"""

from __future__ import annotations
