"""Vectorised text for the raw files: fixed-width ids and timestamps built as byte matrices, turned into
Arrow string arrays without a Python loop per value (the generator writes tens of millions of them).

A *matrix* here is a C-contiguous ``(n, width)`` uint8 array of ASCII codes, one row per value.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_MS_PER_DAY = 86_400_000
_TS_WIDTH = {"iso_ms": 24, "iso_s": 20, "sql": 19, "date": 10}
_PAIRS = np.frombuffer("".join(f"{i:02d}" for i in range(100)).encode(), dtype=np.uint8).reshape(100, 2)


def literal(text: str, n: int) -> np.ndarray:
    """(n, len(text)) matrix repeating ``text``."""
    return np.tile(np.frombuffer(text.encode("ascii"), dtype=np.uint8), (n, 1))


def decimal(values: np.ndarray, width: int) -> np.ndarray:
    """(n, width) matrix of non-negative integers < 10**width, zero-padded (two digits per division)."""
    v = values.astype(np.int64)
    out = np.empty((v.size, width), dtype=np.uint8)
    j = width
    while j >= 2:
        v, low = np.divmod(v, 100)
        out[:, j - 2 : j] = _PAIRS[low]
        j -= 2
    if j:
        out[:, 0] = v % 10 + 48
    return out


def hexadecimal(values: np.ndarray, width: int) -> np.ndarray:
    """(n, width) matrix of lower-case hex digits of non-negative integers < 16**width (width <= 16)."""
    text = values.astype(">u8").tobytes().hex().encode("ascii")
    return np.frombuffer(text, dtype=np.uint8).reshape(-1, 16)[:, 16 - width :]


def strings(*parts: np.ndarray) -> pa.Array:
    """Arrow strings from matrices laid side by side (every row the same width)."""
    n = parts[0].shape[0]
    mat = np.ascontiguousarray(np.concatenate(parts, axis=1)) if len(parts) > 1 else parts[0]
    width = mat.shape[1]
    if n * width >= 2**31:
        raise ValueError("too much text for one Arrow string array; use smaller chunks")
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(mat)))


def vocabulary(words: tuple[str, ...] | list[str] | np.ndarray, index: np.ndarray) -> pa.Array:
    """``words[index]`` as Arrow strings; a negative index gives null."""
    valid = index >= 0
    taken = pa.array(list(words), pa.string()).take(pa.array(np.where(valid, index, 0)))
    return with_nulls(taken, valid)


def categorical(
    words: pa.Array | pa.ChunkedArray | tuple[str, ...] | list[str] | np.ndarray, index: np.ndarray
) -> pa.Array:
    """``words[index]`` dictionary-encoded (no string copied per row); a negative index gives null."""
    if isinstance(words, pa.ChunkedArray):
        dictionary = words.combine_chunks()
    elif isinstance(words, pa.Array):
        dictionary = words
    else:
        dictionary = pa.array(list(words), pa.string())
    valid = index >= 0
    indices = pa.array(np.where(valid, index, 0).astype(np.int32), mask=None if valid.all() else ~valid)
    return pa.DictionaryArray.from_arrays(indices, dictionary)


def join(*parts: pa.Array | str) -> pa.Array:
    """Element-wise concatenation (a plain str repeats); null when any part is null."""
    return pc.binary_join_element_wise(*parts, "")


def integers(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values.astype(np.int64)), pa.string())


def padded(values: np.ndarray, width: int) -> pa.Array:
    """Integers as text, zero-padded to at least ``width`` digits."""
    return pc.utf8_lpad(integers(values), width, "0")


def with_nulls(values: pa.Array, keep: np.ndarray) -> pa.Array:
    """``values`` where ``keep``, null elsewhere."""
    if keep.all():
        return values
    return pc.if_else(pa.array(keep), values, pa.nulls(len(values), values.type))


def _dates(days: np.ndarray, start: str) -> np.ndarray:
    """(n, 10) "YYYY-MM-DD" of whole days since ``start`` (each distinct day rendered once)."""
    if not days.size:
        return np.zeros((0, 10), np.uint8)
    lo = int(days.min())
    span = np.arange(lo, int(days.max()) + 1)
    text = np.datetime_as_string(np.datetime64(start, "D") + span.astype("timedelta64[D]")).astype("S10")
    return np.frombuffer(text.tobytes(), dtype=np.uint8).reshape(-1, 10)[days - lo]


def timestamps(ms: np.ndarray, start: str, style: str) -> pa.Array:
    """ms since ``start`` (UTC midnight) as text: style "iso_ms" "2026-01-05T10:22:33.120Z", "iso_s"
    "2026-01-05T10:22:33Z", "sql" "2026-01-05 10:22:33" or "date" "2026-01-05"."""
    if style not in _TS_WIDTH:
        raise ValueError(f"unknown timestamp style {style!r}")
    ms = ms.astype(np.int64)
    days = np.floor_divide(ms, _MS_PER_DAY)
    out = np.empty((ms.size, _TS_WIDTH[style]), dtype=np.uint8)
    out[:, :10] = _dates(days, start)
    if style != "date":
        rem = ms - days * _MS_PER_DAY
        out[:, 10] = ord(" " if style == "sql" else "T")
        out[:, 11:13] = _PAIRS[rem // 3_600_000]
        out[:, 13] = out[:, 16] = ord(":")
        out[:, 14:16] = _PAIRS[rem // 60_000 % 60]
        out[:, 17:19] = _PAIRS[rem // 1000 % 60]
    if style == "iso_ms":
        frac = rem % 1000
        out[:, 19] = ord(".")
        out[:, 20] = frac // 100 + 48
        out[:, 21:23] = _PAIRS[frac % 100]
    if style.startswith("iso"):
        out[:, -1] = ord("Z")
    return strings(out)


def money(values: pa.Array, scale: int = 2) -> pa.Array:
    """Non-negative floats as text with exactly ``scale`` decimals ("12.90"); nulls stay null."""
    x = values.to_numpy(zero_copy_only=False)
    valid = ~np.isnan(x)
    units = np.round(np.where(valid, x, 0.0) * 10**scale).astype(np.int64)
    text = join(integers(units // 10**scale), ".", padded(units % 10**scale, scale))
    return with_nulls(text, valid)
