"""Sub-byte packing of integer codes into bytes (pure numpy).

One rule for every width: **LSB-first bit stream**. Codes c0, c1, c2, ... of width w bits are laid
end to end, c0 in the lowest bits; bit b of the stream is bit (b % 8) of byte b // 8. So

- 4-bit: byte i = c[2i] | c[2i+1] << 4 (element 2i in the low nibble, 2i+1 in the high nibble);
- 6-bit: three bytes hold the little-endian 24-bit word c0 | c1 << 6 | c2 << 12 | c3 << 18;
- 3- and 5-bit (MX4 / MX6 of arXiv 2302.08007) follow the same stream.

ggml blocks do NOT use this order: q4_0 / q4_1 put element j in the low nibble and element j + 16 in
the high nibble of byte j; tfquant.formats.ggml packs those itself.

Packing runs along the last axis; a length that does not fill the last byte is padded with zero
bits, and the unpackers take the element count ``n`` to drop the padding.
"""
from __future__ import annotations

import numpy as np


def packed_size(n: int, width: int) -> int:
    """Bytes needed for ``n`` codes of ``width`` bits (the last byte zero-padded)."""
    return (n * width + 7) // 8


def pack_bits(codes, width: int) -> np.ndarray:
    """Pack the low ``width`` bits of each code (last axis) into an LSB-first byte stream.

    ``codes`` is any integer array: values in [0, 2^width) are stored as they are, negative values
    down to -2^(width-1) as their two's-complement low bits. Anything else raises, so a caller's
    range bug is not silently truncated. Returns uint8 with the last axis replaced by
    ``packed_size(n, width)``.
    """
    if not 1 <= width <= 8:
        raise ValueError(f"width must be 1..8 bits, got {width}")
    codes = np.asarray(codes)
    if not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(f"codes must be integers, got {codes.dtype}")
    wide = codes.astype(np.int64)
    if wide.size and (wide.min() < -(1 << (width - 1)) or wide.max() >= (1 << width)):
        raise ValueError(f"codes outside [-{1 << (width - 1)}, {(1 << width) - 1}] "
                         f"do not fit in {width} bits")
    low = wide & ((1 << width) - 1)
    n = codes.shape[-1]
    # Expand each code into its bits (LSB first), flatten the bit stream, pad to whole bytes.
    bits = ((low[..., None] >> np.arange(width)) & 1).astype(np.uint8)
    bits = bits.reshape(*codes.shape[:-1], n * width)
    pad = packed_size(n, width) * 8 - n * width
    if pad:
        bits = np.concatenate([bits, np.zeros((*bits.shape[:-1], pad), np.uint8)], axis=-1)
    return np.packbits(bits, axis=-1, bitorder="little")


def unpack_bits(packed, width: int, n: int, signed: bool = False) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``n`` codes of ``width`` bits from the last axis of ``packed``.

    Returns uint8 codes, or int8 two's-complement values when ``signed`` (sign bit = bit width-1).
    """
    if not 1 <= width <= 8:
        raise ValueError(f"width must be 1..8 bits, got {width}")
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.shape[-1] != packed_size(n, width):
        raise ValueError(f"{n} codes of {width} bits need {packed_size(n, width)} bytes, "
                         f"got {packed.shape[-1]}")
    bits = np.unpackbits(packed, axis=-1, bitorder="little")[..., : n * width]
    bits = bits.reshape(*packed.shape[:-1], n, width).astype(np.uint8)
    codes = (bits << np.arange(width, dtype=np.uint8)).sum(axis=-1, dtype=np.uint8)
    if signed:
        # Sign-extend: a code with bit (width-1) set stands for code - 2^width.
        return np.where(codes >= (1 << (width - 1)), codes.astype(np.int16) - (1 << width),
                        codes).astype(np.int8)
    return codes


def pack_int4(codes) -> np.ndarray:
    """Two 4-bit codes per byte along the last axis: element 2i low nibble, 2i+1 high nibble.

    Signed codes in [-8, 7] are stored as two's-complement nibbles; unsigned ones in [0, 15].
    An odd length leaves the last high nibble 0.
    """
    return pack_bits(codes, 4)


def unpack_int4(packed, n: int, signed: bool = False) -> np.ndarray:
    """``n`` 4-bit codes from :func:`pack_int4` bytes (int8 in [-8, 7] when ``signed``)."""
    return unpack_bits(packed, 4, n, signed=signed)


def pack_6bit(codes) -> np.ndarray:
    """Four 6-bit codes in three bytes: the little-endian 24-bit word c0 | c1<<6 | c2<<12 | c3<<18.

    Lengths that are not a multiple of 4 are padded with zero bits to a whole byte
    (``packed_size(n, 6)`` bytes).
    """
    return pack_bits(codes, 6)


def unpack_6bit(packed, n: int) -> np.ndarray:
    """``n`` 6-bit codes (uint8) from :func:`pack_6bit` bytes."""
    return unpack_bits(packed, 6, n)
