"""neutrino-ray: distributed machine learning for neutrino-telescope events on Ray."""

__version__ = "0.1.0"
