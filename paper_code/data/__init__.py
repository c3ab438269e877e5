"""Layer 1 (data): the offline sample photos, ILSVRC2012 validation, any image folder.

Every dataset yields items ``{"image": [3, 224, 224] in [0, 1], "label", "boxes", "id", "path"}``;
bad files (corrupt, truncated, greyscale, CMYK, ...) are converted or skipped with a reason.
"""

from __future__ import annotations

from .datasets import *  # noqa: F403
from .datasets import SAMPLE_JSON, __all__  # noqa: F401
