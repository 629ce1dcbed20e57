"""Well-known locations, all derived from the repository root or the environment."""

import os
from pathlib import Path

LAB_DIR = Path(__file__).resolve().parent.parent
REPO = LAB_DIR.parent.parent
# LAB_SCENARIO_DIR: run scenarios from another directory (e.g. while writing new ones).
SCENARIO_DIR = Path(os.environ.get("LAB_SCENARIO_DIR") or LAB_DIR / "scenarios").resolve()
# Shell helpers scenarios source ("$LAB_LIB/podnet.sh"); l1-image.sh copies them to /lab/lib.
LIB_DIR = LAB_DIR / "lib"
GUEST_IMAGES = REPO / "guest-images"
TARGET = REPO / "target"
LOG_ROOT = TARGET / "lab-logs"
COSTS_FILE = LOG_ROOT / "costs.json"
BERTH_RELEASE = TARGET / "x86_64-unknown-linux-gnu" / "release" / "berth"


def cache_dir() -> Path:
    """The image cache: $BERTH_CACHE, else <repo>/.cache (gitignored)."""
    return Path(os.environ.get("BERTH_CACHE") or REPO / ".cache")
