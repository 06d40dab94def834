"""Files on a local disk or in object storage (``gs://``, ``s3://``, any fsspec
URL), the same way: the cache and evaluation outputs written by the torch side
and read by the JAX side. numpy, json and fsspec only, no JAX or torch, so that
both sides import it.

- ``files``: paths, listing, reading, writing whole files, temporaries;
- ``directories``: directories written whole or not at all (``atomic_directory``);
- ``npy``: ``.npy`` arrays read by rows (memory maps, ranged reads).

Credentials and endpoints come from the file system libraries (gcsfs: Google
application-default credentials; s3fs: the AWS environment and config), or
fsspec's config, e.g. ``FSSPEC_S3_ENDPOINT_URL=http://host:9000`` for MinIO.
"""

from bdpo_jax.storage.directories import (
    COMPLETE_MARKER,
    DirectoryWriter,
    atomic_directory,
    complete_children,
    is_complete,
)
from bdpo_jax.storage.files import (
    HOST,
    absolute,
    append_text,
    create_exclusive,
    exists,
    file_details,
    file_sizes,
    filesystem,
    is_local,
    join,
    list_names,
    process_alive,
    read_bytes,
    read_json,
    read_many,
    read_text,
    remove,
    remove_stale_temporaries,
    rename,
    split,
    stored_checksums,
    temporary_name,
    write_bytes,
    write_json,
    write_text,
)
from bdpo_jax.storage.npy import (
    NpyHeader,
    RemoteArray,
    load_array,
    open_array,
    parse_npy_header,
    read_npy_headers,
    take_rows,
)

__all__ = [
    "COMPLETE_MARKER",
    "HOST",
    "DirectoryWriter",
    "NpyHeader",
    "RemoteArray",
    "absolute",
    "append_text",
    "atomic_directory",
    "complete_children",
    "create_exclusive",
    "exists",
    "file_details",
    "file_sizes",
    "filesystem",
    "is_complete",
    "is_local",
    "join",
    "list_names",
    "load_array",
    "open_array",
    "parse_npy_header",
    "process_alive",
    "read_bytes",
    "read_json",
    "read_many",
    "read_npy_headers",
    "read_text",
    "remove",
    "remove_stale_temporaries",
    "rename",
    "split",
    "stored_checksums",
    "take_rows",
    "temporary_name",
    "write_bytes",
    "write_json",
    "write_text",
]
