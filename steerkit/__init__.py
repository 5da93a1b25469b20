"""steerkit: steer language models by editing MLP neurons read from the weights.

The core (this package) holds data and pure functions: model sources and the
architecture table, neuron decoding and the atlas, profiles and their
compilation, and discovery (concept words -> calibrated profiles).
Runtime adapters that touch torch hooks or llama.cpp live in ``runtimes/``.
"""

from steerkit.errors import SteerkitError

__version__ = "0.1.0"
__all__ = ["SteerkitError", "__version__"]
