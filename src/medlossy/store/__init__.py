"""The compressed store: a Zarr array of axial slices (format 2: one JPEG 2000 codestream
file each; format 3: the same codestreams as inner chunks of shard files)."""

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
