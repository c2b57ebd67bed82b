"""medlossy: lossy compression of 3D medical images at exact ratios, with proof it is safe."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medlossy")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
