"""How many SMS segments a text costs, and the text cut to a number of them.

A body that is all GSM-7 (GSM 03.38's basic table, plus its extension table at
two septets a character) travels at 160 septets in one segment, or 153 per
segment once split (the rest carries the reassembly header). Any other
character makes the whole body UCS-2: 70 UTF-16 units alone, 67 per segment
when split. A character never straddles two segments (an extension character's
escape pair, a surrogate pair), so segments are packed greedily.

A cut text ends in "..." when what is left is GSM-7, since "…" is not GSM-7 and
would turn the whole body into UCS-2 (about twice the segments), and in "…"
when it is UCS-2 anyway.
"""
import math

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

GSM7 = (160, 153)      # septets: one segment alone, each segment of a longer message
UCS2 = (70, 67)        # UTF-16 units, likewise


def is_gsm7(text):
    return all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text)


def _costs(text):
    """(per-character cost, (single, multi) capacity) in the encoding the text needs."""
    if is_gsm7(text):
        return [2 if c in GSM7_EXTENSION else 1 for c in text], GSM7
    return [2 if ord(c) > 0xFFFF else 1 for c in text], UCS2


def segments(text):
    """The number of segments `text` is sent as (0 for an empty text)."""
    costs, (single, multi) = _costs(text)
    if sum(costs) <= single:
        return 1 if text else 0
    count, used = 1, 0
    for cost in costs:
        if used + cost > multi:
            count, used = count + 1, 0
        used += cost
    return count


def ellipsis(text):
    return "..." if is_gsm7(text) else "…"


def fit(text, max_segments):
    """`text` if it fits in `max_segments`, else its longest prefix that fits with its ellipsis."""
    text = text.strip()
    if segments(text) <= max_segments:
        return text
    low, high = 0, len(text)       # the longest prefix length whose cut form fits: binary search
    while low < high:
        middle = math.ceil((low + high) / 2)
        if segments(_cut(text, middle)) <= max_segments:
            low = middle
        else:
            high = middle - 1
    return _cut(text, low)


def _cut(text, length):
    prefix = text[:length].rstrip()
    return prefix + ellipsis(prefix)
