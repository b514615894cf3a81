"""How deeply a JSON or msgpack document nests, found without decoding it and without recursion.

Decoders recurse per nesting level, so a body of a few kilobytes of ``[[[[...`` can exhaust the stack (a
``RecursionError`` in msgspec). The request path checks the depth first with these scans, which cost nearly
nothing for ordinary bodies: one C-speed count of the bytes that could open a container, and the full scan
only when that count exceeds the limit.
"""

from __future__ import annotations

import re
from typing import Final

DEFAULT_MAX_NESTING: Final = 64

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_ALL_BYTES = bytes(range(256))
# Depth is all that matters: objects become arrays (one kind of pair, so one pass removes exactly one level).
_AS_ARRAYS = _ALL_BYTES.translate(bytes.maketrans(b"{}", b"[]"))
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# Bytes that may open a msgpack container: fixmap, fixarray, array16/32, map16/32.
_NOT_MSGPACK_CONTAINERS = bytes(b for b in range(256) if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF))
# Scalars: type byte -> bytes that follow it.
_FIXED: Final = {
    0xC0: 0, 0xC2: 0, 0xC3: 0,  # nil, false, true
    0xCA: 4, 0xCB: 8,  # float32/64
    0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,  # uint8..64
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8,  # int8..64
    0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17,  # fixext 1..16 (type byte + data)
}  # fmt: skip
# Variable-length scalars: type byte -> (width of the length, bytes between the length and the data).
_SIZED: Final = {
    0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0),  # bin8/16/32
    0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1),  # ext8/16/32 (a type byte after the length)
    0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0),  # str8/16/32
}  # fmt: skip


def json_too_deep(body: bytes, limit: int) -> bool:
    """Whether the JSON text ``body`` nests arrays and objects more than ``limit`` levels deep.

    Malformed JSON whose brackets do not balance may also answer True; the caller tells the two apart by
    decoding (which is then safe: a malformed body fails before the decoder recurses very deep, and a
    well-formed one within the decoder's own recursion limit raises ``RecursionError`` at worst).
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", body).translate(_AS_ARRAYS, _NOT_BRACKETS)
    # Each pass removes the innermost level: after ``limit`` passes a document within the limit is gone.
    for _ in range(limit):
        if not brackets:
            return False
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):  # unbalanced: malformed, not deep
            return False
        brackets = shorter
    return bool(brackets)


MAX_WALKED_CONTAINERS: Final = 10_000
"""Above this many container bytes the walk below would cost more than decoding (a 224x224x3 image as
nested lists: ~31 ms to walk, ~7 ms to decode), so it is left to the decoder's own recursion guard, which
msgspec raises as RecursionError (mapped to the same 400) past the interpreter's recursion limit."""


def msgpack_too_deep(data: bytes | memoryview, limit: int) -> bool:
    """Whether the msgpack document ``data`` nests arrays and maps more than ``limit`` levels deep.

    Extension payloads (NumPy arrays) and strings are skipped, not scanned. Truncated or malformed input
    answers False: the decoder reports it. So does a document with more than ``MAX_WALKED_CONTAINERS``
    possible container bytes: its depth is bounded by the decoder instead (see above).
    """
    containers = len(bytes(data).translate(_ALL_BYTES, _NOT_MSGPACK_CONTAINERS))
    if containers <= limit or containers > MAX_WALKED_CONTAINERS:
        return False
    view = memoryview(data).cast("B")
    end = len(view)
    remaining = [1]  # items still to read at each open level; the first is the document itself
    pos = 0
    while remaining and pos < end:
        remaining[-1] -= 1
        kind = view[pos]
        pos += 1
        count = -1
        if kind <= 0x7F or kind >= 0xE0:
            pass
        elif kind <= 0x8F:
            count = (kind & 0x0F) * 2
        elif kind <= 0x9F:
            count = kind & 0x0F
        elif kind <= 0xBF:
            pos += kind & 0x1F
        elif kind in _FIXED:
            pos += _FIXED[kind]
        elif kind in _SIZED:
            width, extra = _SIZED[kind]
            pos += width + extra + int.from_bytes(view[pos : pos + width], "big")
        elif kind in (0xDC, 0xDD):
            width = 2 if kind == 0xDC else 4
            count = int.from_bytes(view[pos : pos + width], "big")
            pos += width
        elif kind in (0xDE, 0xDF):
            width = 2 if kind == 0xDE else 4
            count = 2 * int.from_bytes(view[pos : pos + width], "big")
            pos += width
        else:  # 0xC1 is never used: malformed
            return False
        if count >= 0:
            if len(remaining) > limit:
                return True
            if count:
                # An array of floats (nested lists of numbers) is skipped in one C-speed comparison.
                floats = bytes(view[pos : pos + 9 * count : 9])
                if len(floats) == count and floats == b"\xcb" * count and pos + 9 * count <= end:
                    pos += 9 * count
                else:
                    remaining.append(count)
        while remaining and remaining[-1] == 0:
            remaining.pop()
    return False
