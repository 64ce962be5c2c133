"""What a stored address may hold: the contact schema enforces it, the email channel checks it again.

Python's email generator breaks header lines wherever `str.splitlines()` does:
CR and LF, but also \\x0b, \\x0c, \\x1c-\\x1e, \\x85, U+2028 and U+2029. An address
holding one of them (marshmallow's `Email` takes them inside a quoted local
part, `"a\\x0bReply-To:x@evil.example"@example.com`) adds headers of its own to
mail the bank signs. So an address has no control character, line break,
blank or invisible formatting character anywhere, and no quoted local part
(the one place RFC 5321 lets such characters in; no bank customer needs it).
"""
import re

from ..sanitize import CONTROLS, has_format_chars

E164 = re.compile(r"\+[1-9]\d{1,14}")
_NEEDS_QUOTING = re.compile(r'["\\(),:;<>\[\]]')


def _character_problem(value):
    found = CONTROLS.search(value)
    if found:
        return f"contains a control character or line break (U+{ord(found.group()):04X})"
    if any(char.isspace() for char in value):
        return "contains a blank"
    if has_format_chars(value):
        return "contains an invisible formatting character"
    return None


def email_problem(address):
    """Why `address` cannot be a recipient, or None. Never quotes the address: the reason is
    recorded with the delivery and logged."""
    problem = _character_problem(address)
    if problem:
        return problem
    local, at, domain = address.rpartition("@")
    if not (at and local and domain):
        return "is not of the form local@domain"
    if local.startswith('"') or _NEEDS_QUOTING.search(local):
        return "has a quoted local part or a character that needs quoting"
    if _NEEDS_QUOTING.search(domain):
        return "has a character that needs quoting in its domain"
    return None


def phone_problem(number):
    """Why `number` is not an E.164 number, or None."""
    problem = _character_problem(number)
    if problem:
        return problem
    if not E164.fullmatch(number):
        return "is not an E.164 number"
    return None
