"""Registers and stack frame of each kernel in a cubin, read from its ELF (no GPU, no ptxas).

NVRTC's cubin is an ELF64 file.  Its ``.nv.info`` section lists attributes as records of
(format byte, attribute byte, 16-bit size, value); ``EIATTR_REGCOUNT`` (0x2f) and
``EIATTR_FRAME_SIZE`` (0x11) carry (symbol index, value) pairs, the index into ``.symtab``.
This is what ``cuobjdump --dump-resource-usage`` and ``ptxas -v`` print, read the same way
for sm_80 and sm_90: the counts equal ``ptxas -v``'s (12.9, from the nvidia-cuda-nvcc-cu12
wheel) for every arrayloss kernel on both, and ``tests/test_proxy.py`` checks that wherever a
``ptxas`` is found.
"""

from __future__ import annotations

import struct

_EIATTR_REGCOUNT = 0x2F
_EIATTR_FRAME_SIZE = 0x11
_EIFMT_SVAL = 4  # a record with a value of `size` bytes
_SHT_SYMTAB = 2


def _sections(cubin: bytes) -> list[tuple[str, int, int, int, int]]:
    """(name, type, offset, size, link) of every section."""
    if cubin[:4] != b"\x7fELF" or cubin[4] != 2:
        raise ValueError("not an ELF64 cubin")
    (section_offset,) = struct.unpack_from("<Q", cubin, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", cubin, 0x3A)
    raw = [struct.unpack_from("<IIQQQQIIQQ", cubin, section_offset + k * entry_size)
           for k in range(count)]
    names_offset = raw[names_index][4]

    def name(offset: int) -> str:
        start = names_offset + offset
        return cubin[start:cubin.index(b"\0", start)].decode()

    return [(name(s[0]), s[1], s[4], s[5], s[6]) for s in raw]


def _symbol_names(cubin: bytes, sections: list[tuple[str, int, int, int, int]]) -> list[str]:
    for _, kind, offset, size, link in sections:
        if kind != _SHT_SYMTAB:
            continue
        strings = sections[link][2]
        names = []
        for start in range(offset, offset + size, 24):  # Elf64_Sym
            (name_offset,) = struct.unpack_from("<I", cubin, start)
            begin = strings + name_offset
            names.append(cubin[begin:cubin.index(b"\0", begin)].decode())
        return names
    return []


def resources(cubin: bytes) -> dict[str, dict[str, int]]:
    """``{kernel symbol: {"registers": r, "frame_bytes": f}}``."""
    sections = _sections(cubin)
    symbols = _symbol_names(cubin, sections)
    found: dict[str, dict[str, int]] = {}
    for name, _, offset, size, _ in sections:
        if name != ".nv.info":
            continue
        at = offset
        while at + 4 <= offset + size:
            form, attribute, length = struct.unpack_from("<BBH", cubin, at)
            if form != _EIFMT_SVAL:
                at += 4
                continue
            if attribute in (_EIATTR_REGCOUNT, _EIATTR_FRAME_SIZE) and length == 8:
                symbol, value = struct.unpack_from("<II", cubin, at + 4)
                key = "registers" if attribute == _EIATTR_REGCOUNT else "frame_bytes"
                found.setdefault(symbols[symbol], {})[key] = value
            at += 4 + length
    # Kernels only: the compiler's internal functions (``$__internal_...``) have a frame size
    # but no register count of their own (theirs is the calling kernel's).
    return {name: usage for name, usage in found.items() if "registers" in usage}
