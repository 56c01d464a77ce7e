"""core/_batchread.c: a batch folder's newest file found and read with the GIL released once (see core/batchread.py)."""

def newest(
    folder: str, cap: int, temp_suffix: str, follow: bool, /
) -> tuple[int, int, int, str, bytes, int, int] | None:
    """The folder's st_dev, st_ino and st_mtime_ns, its newest candidate's name, that file's
    bytes, st_mtime_ns and st_size; None for anything out of the ordinary."""
