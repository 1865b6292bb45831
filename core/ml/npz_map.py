"""Open an NPZ file's arrays memory-mapped (the worker's view of a stored dataset).

A member stored uncompressed (the canonical form: X) is mapped in place; a compressed one
(older canonical files, y) is decompressed chunk by chunk to a .npy file beside it and
mapped from there. The mapped pages are read from the file as training touches them, so
loading a dataset never makes a second copy of it in memory.
"""

from __future__ import annotations

import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["load_npz_mapped"]

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zip local file header (30 bytes)
COPY_BYTES = 8 << 20


def _data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start in the zip file."""
    with open(path, "rb") as fp:
        fp.seek(info.header_offset)
        fields = _LOCAL_HEADER.unpack(fp.read(_LOCAL_HEADER.size))
        name_len, extra_len = fields[-2], fields[-1]
        return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def _map_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One member as a read-only memory map (decompressed to a side file if it must be)."""
    if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
        offset = _data_offset(path, info)
        with open(path, "rb") as fp:
            fp.seek(offset)
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
            start = fp.tell()
        if dtype.hasobject:
            raise ValueError("object arrays are refused (they would need pickle)")
        if int(np.prod(shape)) == 0:
            return np.zeros(shape, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=start, shape=shape,
                         order="F" if fortran else "C")
    side = path.with_name(f"{path.name}.{info.filename}")
    with zf.open(info) as src, open(side, "wb") as out:
        shutil.copyfileobj(src, out, COPY_BYTES)
    try:
        return np.load(side, mmap_mode="r", allow_pickle=False)
    finally:
        side.unlink()  # the map keeps the data reachable until it is dropped


def load_npz_mapped(path: Path) -> dict[str, np.ndarray]:
    """Every array of the NPZ at `path`, memory-mapped read-only, by np.load's names."""
    with zipfile.ZipFile(path) as zf:
        return {info.filename.removesuffix(".npy"): _map_member(path, zf, info)
                for info in zf.infolist()}
