"""Messages in the recipient's language: the contact's `locale` picks template translations and the
service's own strings (gettext catalogues managed with Babel), and dates and amounts are written the
way that locale writes them, times in the contact's zone.

Fallback chain: a BCP 47 tag loses its last subtag until something matches, then the default:
`de-AT` → `de` → `en`. The locale *used* (the email's `Content-Language`) is the first of the chain
that has a catalogue here or a translation in the event's templates.

Catalogues: `app/i18n/translations/<lang>/LC_MESSAGES/messages.po`, read at first use (no compiled
.mo needs to be built or committed). docs/channels.md#languages says how to add a locale with
`pybabel extract/update/init/compile`.
"""
import decimal
import functools
import io
import zoneinfo
from pathlib import Path

from babel import Locale, UnknownLocaleError, dates, numbers
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

DEFAULT = "en"
CATALOGUES = Path(__file__).parent / "translations"


def narrowing(tag):
    """`de-AT` → ["de-AT", "de"]: the tag, then each shorter prefix (no default)."""
    parts = (tag or "").replace("_", "-").split("-")
    return ["-".join(parts[:n]) for n in range(len(parts), 0, -1) if parts[0]]


def chain(tag):
    """`de-AT` → ["de-AT", "de", "en"]: most specific first, the default last."""
    found = narrowing(tag)
    return found + ([DEFAULT] if DEFAULT not in found else [])


def pick(translations, tag):
    """(locale, text) of a trigger's per-locale text for a contact's locale tag: the most specific of
    `de-AT` → `de` it has, or (None, None): the trigger's own text (no default language is assumed)."""
    if translations and tag:
        for candidate in narrowing(tag):
            if candidate in translations:
                return candidate, translations[candidate]
    return None, None


def known(tag):
    """Whether Babel (CLDR) knows the language (and script and region) of a well-formed tag."""
    try:
        Locale.parse(tag.replace("-", "_"))
        return True
    except (UnknownLocaleError, ValueError):
        return False


@functools.lru_cache(maxsize=None)
def shipped():
    """The languages with a catalogue here."""
    return frozenset(p.parent.parent.name for p in CATALOGUES.glob("*/LC_MESSAGES/messages.po")) | {DEFAULT}


@functools.lru_cache(maxsize=64)
def catalogue(language):
    """The gettext translations of one catalogue language (NullTranslations when there is none)."""
    path = CATALOGUES / language / "LC_MESSAGES" / "messages.po"
    if not path.exists():
        return NullTranslations()
    with path.open("rb") as f:
        messages = read_po(f, locale=language)
    compiled = io.BytesIO()
    write_mo(compiled, messages)
    compiled.seek(0)
    return Translations(fp=compiled)


def used(tag, translated=()):
    """The locale a message for `tag` is written in: the first of its chain with a catalogue or a
    template translation (`translated`)."""
    for candidate in chain(tag):
        if candidate in translated or candidate in shipped():
            return candidate
    return DEFAULT


def gettext(locale, message, **values):
    text = catalogue(locale.split("-")[0]).ugettext(message)
    return text % values if values else text


def ngettext(locale, singular, plural, count, **values):
    text = catalogue(locale.split("-")[0]).ungettext(singular, plural, count)
    return text % dict(values, count=count)


def _babel_locale(locale):
    try:
        return Locale.parse(locale.replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        return Locale.parse(DEFAULT)


def format_datetime(moment, locale, timezone=None, format="medium"):
    """A time as the locale writes it, in the contact's zone (UTC when none or unknown)."""
    try:
        zone = zoneinfo.ZoneInfo(timezone or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        zone = zoneinfo.ZoneInfo("UTC")
    return dates.format_datetime(moment, format=format, tzinfo=zone, locale=_babel_locale(locale))


def format_amount(value, currency, locale):
    """An amount as the locale writes it: 1234.56 EUR is `1.234,56 €` in de, `€1,234.56` in en."""
    return numbers.format_currency(value, currency, locale=_babel_locale(locale))


def amounts(stored, tag, fallback=DEFAULT):
    """A trigger's amounts as template variables, each written the way the contact's locale writes
    it (`de`: `1.234,56 €`, `en`: `€1,234.56`, `de-AT`: `€ 1.234,56`); a tag Babel does not know
    formats as `fallback` (the locale the message is written in)."""
    if not stored:
        return {}
    locale = tag if tag and known(tag) else fallback
    return {name: format_amount(decimal.Decimal(value["amount"]), value["currency"], locale)
            for name, value in stored.items()}


def localised_templates(domain, group, event, tag, text_locale=None):
    """(templates, locale used) of one event for a contact's locale tag. Each template scope
    (default, group, group.event) may carry `translations: {<locale>: {<template>: text}}`; a more
    specific scope wins, and within a scope the most specific locale of the chain. `text_locale`:
    the locale of the trigger's per-locale text the notification was stored in (it counts as
    translated for the locale used: an `it` text with no `it` catalogue is still an `it` message)."""
    scopes = [domain.templates.get("default"), domain.templates.get(group), domain.templates.get(f"{group}.{event}")]
    scopes = [dict(s) for s in scopes if isinstance(s, dict)]
    translated = {loc for s in scopes for loc in (s.get("translations") or {})}
    locale = used(tag, translated | ({text_locale} if text_locale else set()))
    wanted = [c for c in chain(tag) if c in translated]
    templates = {}
    for scope in scopes:
        translations = scope.pop("translations", None) or {}
        templates.update(scope)
        for candidate in reversed(wanted):
            templates.update(translations.get(candidate) or {})
    return templates, locale
