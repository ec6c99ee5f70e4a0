"""bouquet: Flower plugins for communication-efficient, heterogeneity-aware federated
learning.

The top-level folders of the repository are mapped into this namespace by
``[tool.setuptools.package-dir]``: ``bouquet.codecs``, ``bouquet.strategies``,
``bouquet.clients``, ``bouquet.models``, ``bouquet.data``, ``bouquet.simulations`` and
``bouquet.conf`` (Hydra configs, package data).
"""

__version__ = "0.1.0"
