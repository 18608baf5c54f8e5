"""The run-time search path (RUNPATH or RPATH) of an ELF shared library: read it, and shorten it in place.

`hvd-keras build-horovod` links horovod against NCCL wherever it finds it; when
that is the `nvidia-nccl` wheel of the building environment, the linker records
that environment's directory, and a cached build reused by another environment
would load the first one's NCCL, or fail once it is deleted. The entry is
rewritten to one relative to the library (`$ORIGIN/...`). Written here rather
than taken from patchelf (GPL) to keep the install free of tools: a path only
ever gets shorter, so the string is overwritten where it lies.
"""

import struct

_DT_NULL, _DT_STRTAB, _DT_RPATH, _DT_RUNPATH = 0, 5, 15, 29
_PT_LOAD, _PT_DYNAMIC = 1, 2


class ElfError(ValueError):
    """Not a 64-bit little-endian ELF file, or its search path cannot be changed as asked."""


def _dynamic(data):
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ElfError("not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == _PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        raise ElfError("no dynamic section (a static executable?)")
    entries = []
    for offset in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", data, offset)
        if tag == _DT_NULL:
            break
        entries.append((tag, value))
    strtab_vaddr = dict(entries).get(_DT_STRTAB)
    for vaddr, offset, size in loads:
        if strtab_vaddr is not None and vaddr <= strtab_vaddr < vaddr + size:
            return entries, strtab_vaddr - vaddr + offset
    raise ElfError("the dynamic string table is outside every loaded segment")


def _string_at(data, offset):
    return data[offset:data.index(b"\0", offset)].decode()


def search_path(path):
    """The library's RUNPATH (or RPATH where it has no RUNPATH) as a list of directories; [] when it has none."""
    with open(path, "rb") as f:
        data = f.read()
    entries, strtab = _dynamic(data)
    found = dict(entries)
    value = found.get(_DT_RUNPATH, found.get(_DT_RPATH))
    return [] if value is None else _string_at(data, strtab + value).split(":")


def rewrite_search_path(path, replace):
    """Replaces directories of the library's RUNPATH/RPATH in place; returns the new list.

    Args:
        path: the shared library, changed in place.
        replace: a function from a directory to its replacement (the same
            directory to keep it, None to drop it).
    """
    with open(path, "rb") as f:
        data = bytearray(f.read())
    entries, strtab = _dynamic(data)
    changed = None
    for tag, value in entries:
        if tag not in (_DT_RUNPATH, _DT_RPATH):
            continue
        start = strtab + value
        old = _string_at(data, start)
        new = ":".join(d for d in (replace(d) for d in old.split(":")) if d)
        if len(new.encode()) > len(old.encode()):
            raise ElfError(f"the new search path {new!r} is longer than the old {old!r}; it can only shrink in place")
        data[start:start + len(old.encode())] = new.encode().ljust(len(old.encode()), b"\0")
        changed = new.split(":") if new else []
    if changed is None:
        return []
    with open(path, "wb") as f:
        f.write(data)
    return changed
