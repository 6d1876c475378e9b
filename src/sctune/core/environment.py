"""What a run records about where it ran (``env.json``): versions, device, git revision."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any


def environment() -> dict[str, Any]:
    """sctune, torch and Python versions, CUDA, the platform and the git revision if any."""
    import torch

    from sctune import __version__

    try:
        sha = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=Path(__file__).parent,
            ).stdout.strip()
            or None
        )
    except Exception:
        sha = None
    return {
        "sctune": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "git_sha": sha,
        "platform": platform.platform(),
    }
