"""core/_fsbatch.c: a slice's system calls with the GIL released once (see core/batchfs.py)."""

def stage_many(paths: list[str], datas: list[bytes], mode: int, chmod: bool, /) -> list[int]:
    """Create each path (O_EXCL) with `mode` (fchmod'ed to it when `chmod`) holding its data;
    each one's errno (0: written; a file not written is removed)."""

def link_many(sources: list[str], targets: list[str], /) -> list[int]:
    """link(2) each source to its target; each one's errno (0: linked). The source is removed
    after 0 or EEXIST, kept after any other error."""
