"""medlossy: lossy compression of 3D medical images at exact ratios, with proof it is safe."""

from importlib.metadata import PackageNotFoundError, version

from medlossy.gpu_libraries import import_nvimgcodec

try:
    __version__ = version("medlossy")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

# Before anything imports it (MONAI does with monai.transforms): loaded here without the
# native "Failed to load nvjpeg library!" lines it prints on machines without CUDA.
import_nvimgcodec()
