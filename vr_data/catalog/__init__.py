"""The catalog: what audio a user has, as portable manifests.

`manifest` is the schema (records, JSONL reading and writing, splits); `layouts` turns the folder
layouts people have into scan candidates; `scan` decodes, checks and hashes them into manifests;
`sources` decodes an item's sources for the store builder and the statistics. Importing the
package imports only the schema.
"""

from vr_data.catalog.manifest import ROLES, SPLITS, FileEntry, Item, Manifest, read_manifest, write_manifest

__all__ = ["ROLES", "SPLITS", "FileEntry", "Item", "Manifest", "read_manifest", "write_manifest"]
