"""Where bytes land: local files written atomically (object stores come with batch generation)."""

from genpipe.storage.atomic import atomic_directory, atomic_write_bytes, sha256_file

__all__ = ["atomic_directory", "atomic_write_bytes", "sha256_file"]
