"""Training straight from compressed stores: patches decoded on the fly, at any level.

``StorePatchDataset`` (a PyTorch / MONAI dataset), ``StoreVolume`` (box reads of one store),
``measure_supply`` (what ``medlossy bench loader`` prints), the optional GPU decoders in
``medlossy.loading.gpu``, and whole-store readers for MONAI's ``LoadImage``
(``medlossy.loading.monai_reader``) and TorchIO's ``ScalarImage``
(``medlossy.loading.torchio_reader``).
"""

from medlossy.loading.cache import set_budget as set_decode_cache
from medlossy.loading.dataset import StorePatchDataset, group_stores
from medlossy.loading.volume import StoreVolume

__all__ = ["StorePatchDataset", "StoreVolume", "group_stores", "set_decode_cache"]
