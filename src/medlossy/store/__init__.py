"""The compressed store: a Zarr (format 2) array of axial slices, one JPEG 2000 codestream each."""

from medlossy.store.slice_store import (
    MetadataMismatch,
    SliceStore,
    StoreLayout,
    render_metadata,
    stored_bytes,
    write_store,
)

__all__ = ["MetadataMismatch", "SliceStore", "StoreLayout", "render_metadata", "stored_bytes",
           "write_store"]
