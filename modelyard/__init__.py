"""modelyard: a model runtime registry on MLServer."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("modelyard")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
