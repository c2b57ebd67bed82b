"""medlossy: lossy compression of 3D medical images at exact ratios, with proof it is safe."""

from medlossy.gpu_libraries import import_nvimgcodec


def __getattr__(name: str) -> str:
    # The version is looked up when first asked for: importlib.metadata costs 40-120 ms, and
    # the console script catches Ctrl-C only once this package is imported (cli/entry.py).
    if name != "__version__":
        raise AttributeError(f"module 'medlossy' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medlossy")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0"


# Before anything imports it (MONAI does with monai.transforms): loaded here without the
# native "Failed to load nvjpeg library!" lines it prints on machines without CUDA.
import_nvimgcodec()
