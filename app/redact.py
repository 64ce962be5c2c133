"""Personal data and secrets out of text that operators and users read.

Why one module: provider replies (`450 4.1.1 <carol@example.com>`), library
errors (a URL with the Twilio account SID in its path or a token in its query)
and database errors (`Key (email)=(…)`) end up in `last_error`, log lines, RQ's
failed-job text and `flask deliveries failed`. Each of those passes its text
through `redact` (the log formatter does it for every line, app/logs.py), so
one list of rules decides what never leaves the process:

    email addresses                      -> [email]
    phone numbers (8-15 digits)          -> [phone]
    URL credentials, query and fragment  -> scheme://host/path?[redacted]
    JWTs, Bearer/Basic values            -> [token]
    key=value secrets (token=, password=, api_key=, ticket=, …) -> key=[redacted]
    Twilio account/key/service SIDs      -> [sid]
    other long random strings (24+ characters, letters and digits mixed) -> [token]
    values quoted by PostgreSQL (`Key (…)=(…)`, `Failing row contains (…)`,
    `invalid input syntax for type …: "…"`) -> [value]; the statement it
    quotes around an error (`LINE 1: …`) -> [statement]

UUIDs, hex digests and identifiers made of words stay: they are what an
operator follows a delivery or a request by. Notification text has no shape a
rule could find: code never puts it in an error or a log line, and
tests/security/test_pii.py scans the logs of a full run for it.
"""
import re

_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]{1,15}://)([^\s/?#@'\"<>]*@)?([^\s/?#'\"<>]*)([^\s?#'\"<>]*)"
                  r"([?#][^\s'\"<>]*)?")
_QUERY = re.compile(r"(?<=[\w/.])\?[^\s'\"<>=?]+=[^\s'\"<>)]*")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_AUTH = re.compile(r"\b(Bearer|Basic|Token)\s+[A-Za-z0-9._~+/=-]{6,}", re.IGNORECASE)
_ASSIGNED = re.compile(r"\b((?:auth_?|access_?|refresh_?)?token|api_?key|password|passwd|secret|signature|sig"
                       r"|ticket|credentials?)(\"?'?\s*[:=]\s*\"?'?)(?!\[)[^\s&\"',;)}]+", re.IGNORECASE)
_SID = re.compile(r"\b(?:AC|SK|MG|PN|CA)[0-9a-fA-F]{32}\b")
_LONG = re.compile(r"(?<![\w-])[A-Za-z0-9_-]{24,}(?![\w-])")
_PLAIN = re.compile(r"[0-9a-f]+|[0-9A-F]+|[A-Za-z]+|[0-9]+")
_PHONE = re.compile(r"(?<![\w.+-])\+?\(?\d[\d\s().-]{6,}\d(?![\w-]|\.\d)")
_IP_OR_DATE = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}|\d{4}-\d{2}-\d{2}|\d+\.\d+")
_PG_VALUE = re.compile(r"(Key \([^)\n]*\)=\()[^\n]*?(\) (?:already exists|is not present|conflicts))")
_PG_ROW = re.compile(r"(Failing row contains \().*(\))")
_PG_LINE = re.compile(r"^(LINE \d+: ).*$", re.MULTILINE)   # the statement, quoted around an error
_PG_INPUT = re.compile(r"((?:input syntax for type|input value for enum) [\w ]+: )\"[^\"]*\"")


def _url(match):
    scheme, userinfo, host, path, rest = match.groups()
    return f"{scheme}{'[credentials]@' if userinfo else ''}{host}{path}{'?[redacted]' if rest else ''}"


def _long(match):
    """A long run of letters and digits: kept when every `-`/`_` part is plain (hex, a word, a
    number), replaced when it looks random."""
    text = match.group(0)
    if all(_PLAIN.fullmatch(part) for part in re.split(r"[-_]", text) if part):
        return text
    if not (re.search(r"\d", text) and re.search(r"[A-Za-z]", text)):
        return text
    return "[token]"


def _phone(match):
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    if not 8 <= digits <= 15 or _IP_OR_DATE.fullmatch(text.strip()):
        return text
    return "[phone]"


def redact(text):
    """`text` with personal data and secrets replaced by their kind (None stays None)."""
    if not text:
        return text
    text = str(text)
    kept = []

    def keep(match):
        kept.append(match.group(0))
        return f"\x00{len(kept) - 1}\x00"

    text = _UUID.sub(keep, text)             # ids stay whole, and are never read as phone numbers
    text = _URL.sub(_url, text)
    text = _QUERY.sub("?[redacted]", text)
    text = _EMAIL.sub("[email]", text)
    text = _JWT.sub("[token]", text)
    text = _AUTH.sub(lambda m: f"{m.group(1)} [token]", text)
    text = _ASSIGNED.sub(lambda m: f"{m.group(1)}{m.group(2)}[redacted]", text)
    text = _SID.sub("[sid]", text)
    text = _PG_VALUE.sub(lambda m: f"{m.group(1)}[value]{m.group(2)}", text)
    text = _PG_ROW.sub(lambda m: f"{m.group(1)}[values]{m.group(2)}", text)
    text = _PG_LINE.sub(lambda m: f"{m.group(1)}[statement]", text)
    text = _PG_INPUT.sub(lambda m: f'{m.group(1)}"[value]"', text)
    text = _LONG.sub(_long, text)
    text = _PHONE.sub(_phone, text)
    return re.sub(r"\x00(\d+)\x00", lambda m: kept[int(m.group(1))], text)


def summary(exc, limit=300):
    """An exception as operators may log it: its type, PostgreSQL's SQLSTATE when it has one, and its
    redacted first line (a database error's DETAIL line, which quotes row values, is dropped)."""
    code = getattr(exc, "pgcode", None)
    diag = getattr(exc, "diag", None)
    message = (getattr(diag, "message_primary", None) if diag is not None else None) or str(exc)
    first = message.strip().splitlines()[0] if message.strip() else ""
    head = f"{type(exc).__name__}" + (f" (SQLSTATE {code})" if code else "")
    return f"{head}: {redact(first)}"[:limit] if first else head
