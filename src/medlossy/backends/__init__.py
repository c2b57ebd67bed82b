"""Training backends behind one interface (``base``): the built-in MONAI U-Net and nnU-Net v2.

Importing this package registers both; ``get_backend(name)`` returns one.
"""

from medlossy.backends import builtin, nnunet
from medlossy.backends.base import (
    ModelInfo,
    TrainingBackend,
    TrainRequest,
    Workload,
    backend_names,
    backend_of,
    get_backend,
)

__all__ = ["ModelInfo", "TrainRequest", "TrainingBackend", "Workload", "backend_names",
           "backend_of", "builtin", "get_backend", "nnunet"]
