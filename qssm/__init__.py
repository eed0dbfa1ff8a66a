"""qssm: quantize small sequence models per component and map them to switched-capacitor IMC.

The Python API (``qssm.wrap``, ``qssm.quantize``, ``qssm.calibrate``, ``qssm.footprint``,
``qssm.evaluate``, ``qssm.save``, ``qssm.load``; docs/api.md) is ``qssm.api``, imported on first
use so that ``import qssm`` stays light."""

import os
import warnings

from .version import __version__

# libgomp (torch's OpenMP) keeps its idle threads spinning for a while after every parallel
# region, on the cores numba's kernel threads need next; spinning briefly before sleeping lets
# the two pools share the cores (docs/performance.md: an S4D QAT step on two threads).  libgomp
# reads this when torch loads it, so it holds where qssm is imported before torch; a value set
# in the environment is kept.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

# Brevitas announces an optional CUDA kernel package on import; it is irrelevant here.
warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")

__all__ = ["__version__"]
API = ("Quantized", "wrap", "quantize", "calibrate", "footprint", "evaluate", "save", "load")


def __getattr__(name: str):
    if name in API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'qssm' has no attribute {name!r}")
