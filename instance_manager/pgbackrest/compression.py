"""Decompressing one small file of a backup (its backup_label) as pgBackRest stored it.

gzip and bzip2 come with Python. lz4 is decoded here (the frame format and the block
format are short and documented: lz4_Frame_format.md, lz4_Block_format.md); checksums
are not verified, pgBackRest verified the file when it stored it. zstd is not supported.
"""

from __future__ import annotations

import bz2
import gzip

LZ4_MAGIC = 0x184D2204
_SKIPPABLE = 0x184D2A50  # ... to 0x184D2A5F: frames to be skipped
_FLG_BLOCK_CHECKSUM = 0x10
_FLG_CONTENT_SIZE = 0x08
_FLG_CONTENT_CHECKSUM = 0x04
_FLG_DICT_ID = 0x01
_UNCOMPRESSED_BLOCK = 0x80000000
_MIN_MATCH = 4


class DecompressError(ValueError):
    """The data is not what its extension says."""


def decompress(name: str, data: bytes) -> bytes:
    """``data`` of the repository file ``name`` (its extension says how it is compressed)."""
    try:
        if name.endswith(".gz"):
            return gzip.decompress(data)
        if name.endswith(".bz2"):
            return bz2.decompress(data)
        if name.endswith(".lz4"):
            return lz4_frames(data)
    except (OSError, EOFError, IndexError) as exc:
        raise DecompressError(f"{name}: {exc}") from exc
    if name.endswith(".zst"):
        raise DecompressError(f"{name}: zstd is not supported")
    return data


def _u32(data: bytes, at: int) -> int:
    if at + 4 > len(data):
        raise DecompressError("truncated lz4 data")
    return int.from_bytes(data[at : at + 4], "little")


def lz4_frames(data: bytes) -> bytes:
    """Every frame of an lz4 stream, concatenated."""
    out = bytearray()
    at = 0
    while at < len(data):
        magic = _u32(data, at)
        if magic & 0xFFFFFFF0 == _SKIPPABLE:
            at += 8 + _u32(data, at + 4)
        elif magic == LZ4_MAGIC:
            at = _frame(data, at + 4, out)
        else:
            raise DecompressError(f"not an lz4 frame (magic {magic:#x})")
    return bytes(out)


def _frame(data: bytes, at: int, out: bytearray) -> int:
    """Decode the frame whose descriptor starts at ``at``; returns the offset after it."""
    flags = data[at]
    if flags >> 6 != 1:
        raise DecompressError("unsupported lz4 frame version")
    at += 2 + (8 if flags & _FLG_CONTENT_SIZE else 0) + (4 if flags & _FLG_DICT_ID else 0)
    at += 1  # header checksum
    while True:
        size = _u32(data, at)
        at += 4
        if size == 0:
            break
        length = size & ~_UNCOMPRESSED_BLOCK
        block = data[at : at + length]
        if len(block) != length:
            raise DecompressError("truncated lz4 block")
        if size & _UNCOMPRESSED_BLOCK:
            out += block
        else:
            _block(block, out)  # earlier blocks stay in ``out``: linked blocks can refer to them
        at += length + (4 if flags & _FLG_BLOCK_CHECKSUM else 0)
    return at + (4 if flags & _FLG_CONTENT_CHECKSUM else 0)


def _length(block: bytes, at: int, nibble: int) -> tuple[int, int]:
    """A literal or match length: the token's nibble, then bytes while they are 255."""
    length = nibble
    if nibble == 15:
        while True:
            extra = block[at]
            at += 1
            length += extra
            if extra != 255:
                break
    return length, at


def _block(block: bytes, out: bytearray) -> None:
    """One lz4 block: sequences of literals then a match copied from what is decoded."""
    at = 0
    while at < len(block):
        token = block[at]
        literals, at = _length(block, at + 1, token >> 4)
        out += block[at : at + literals]
        at += literals
        if at >= len(block):
            return  # the last sequence has literals only
        offset = block[at] | block[at + 1] << 8
        at += 2
        if offset == 0 or offset > len(out):
            raise DecompressError("lz4 match offset out of range")
        match, at = _length(block, at, token & 0x0F)
        start = len(out) - offset
        for n in range(match + _MIN_MATCH):  # byte by byte: a match may overlap its output
            out.append(out[start + n])
