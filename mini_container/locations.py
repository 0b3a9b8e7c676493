"""Where the engine keeps its data: images, layers and containers.

One root directory, /var/lib/mini-container by default; `$MINI_CONTAINER_ROOT` (or minictl's --root)
moves it, which is how the tests keep a private store that they remove afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ROOT = Path("/var/lib/mini-container")


def engine_root() -> Path:
    """The engine's data root: $MINI_CONTAINER_ROOT, or /var/lib/mini-container."""
    return Path(os.environ.get("MINI_CONTAINER_ROOT") or DEFAULT_ROOT)
