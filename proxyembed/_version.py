"""The package version, in a module of its own: anything may import it without importing the rest of proxyembed.

pyproject.toml reads it from here (``[tool.setuptools.dynamic]``), so it is written in one place.
"""

__version__ = "0.1.0"
