"""Find and redact personal data and secrets before text reaches a training set.

A model memorises rare strings, so an e-mail address or an API key that survives the data stage can be
recited later. Every detector here is a compiled regex that proposes candidates plus a cheap check that
throws out look-alikes: Luhn for cards, mod-97 for IBANs, ISO 7064 for Chinese ID numbers, octet ranges
for IPs, forbidden ranges for SSNs, mixed character classes for keys. Precision matters as much as recall
because every false positive damages training text (dates, prices, versions, hashes are all numbers).

The stage runs over tens of megabytes, so cost is kept near one regex scan per text: secrets and e-mails
are only looked for when a substring test finds their prefix or '@', and the digit-based types run only
in small windows around the runs of digits that a single scan (_REGION) finds. Every pattern starts with
a literal or a character class, lookbehinds after it, so `re` skips ahead in C.
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date

PII_TYPES: tuple[str, ...] = ("EMAIL", "PHONE", "CREDIT_CARD", "IP_ADDRESS", "IBAN", "SSN", "CN_ID", "SECRET")

# Overlap resolution: a more specific (checksummed or prefixed) type beats a structural guess, so
# "+86 ..." inside a key never becomes a PHONE and an 18-digit CN ID never becomes a card.
_PRIORITY = {t: i for i, t in enumerate(
    ("SECRET", "EMAIL", "CN_ID", "IBAN", "CREDIT_CARD", "SSN", "IP_ADDRESS", "PHONE"))}


@dataclass(frozen=True)
class PiiMatch:
    """One detected span: `text == source[start:end]`, `type` is one of PII_TYPES."""

    type: str
    start: int
    end: int
    text: str


# ---------------------------------------------------------------- checksums and validators

_LUHN_DOUBLE = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def luhn_ok(digits: str) -> bool:
    """Luhn mod-10 over a string of ASCII digits (separators already removed)."""
    if not (digits.isascii() and digits.isdigit()):
        return False
    total = sum(_LUHN_DOUBLE[ord(c) - 48] if i & 1 else ord(c) - 48 for i, c in enumerate(reversed(digits)))
    return total % 10 == 0


# SWIFT IBAN registry lengths; an unknown country or a wrong length is rejected before the checksum,
# which leaves a 1-in-97 chance only for strings that already look exactly like an IBAN.
_IBAN_LEN = {c[:2]: int(c[2:]) for c in (
    "AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DK18 DO28 EE20 EG29 "
    "ES24 FI18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HR21 HU28 IE22 IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 "
    "LB28 LC32 LI21 LT20 LU20 LV21 LY25 MC27 MD24 ME22 MK19 MR27 MT31 MU30 NL18 NO15 PK24 PL28 PS29 PT25 "
    "QA29 RO24 RS22 SA24 SC31 SD18 SE24 SI19 SK24 SM27 ST25 SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20"
).split()}
_CUT_BY_LEN = {n: re.compile(rf"[A-Z0-9](?: ?[A-Z0-9]){{{n - 1}}}", re.I) for n in set(_IBAN_LEN.values())}
_IBAN_CUT = {cc: _CUT_BY_LEN[n] for cc, n in _IBAN_LEN.items()}
_IBAN_DIGITS = str.maketrans({chr(c): str(c - 55) for c in range(ord("A"), ord("Z") + 1)})


def iban_ok(iban: str) -> bool:
    """Country length plus ISO 13616 mod-97 == 1; spaces are ignored."""
    s = iban.replace(" ", "").upper()
    if _IBAN_LEN.get(s[:2]) != len(s) or not s[2:4].isdigit() or not s.isalnum():
        return False
    return int((s[4:] + s[:4]).translate(_IBAN_DIGITS)) % 97 == 1


_CN_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_CHECK = "10X98765432"
_CN_PROVINCES = frozenset("11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 50 51 52 53 54 "
                          "61 62 63 64 65 71 81 82 83 91".split())
_TODAY = date.today()


def _plausible_birth_date(yyyymmdd: str) -> bool:
    try:
        y, m, d = int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8])
        return y >= 1900 and date(y, m, d) <= _TODAY
    except ValueError:
        return False


def cn_id_ok(number: str) -> bool:
    """18-character resident ID: province code, real birth date, ISO 7064 MOD 11-2 check character."""
    # The birth date matters: the check character alone passes one random string in eleven.
    if (len(number) != 18 or not number[:17].isdigit() or number[:2] not in _CN_PROVINCES
            or not _plausible_birth_date(number[6:14])):
        return False
    total = sum((ord(c) - 48) * w for c, w in zip(number, _CN_WEIGHTS, strict=False))
    return _CN_CHECK[total % 11] == number[17].upper()


def ssn_ok(ssn: str) -> bool:
    """AAA-GG-SSSS with the ranges the SSA never issues (000, 666, 9xx areas; 00 group; 0000 serial)."""
    area, group, serial = ssn[:3], ssn[4:6], ssn[7:]
    if len(ssn) != 11 or ssn[3] != "-" or ssn[6] != "-" or not (area + group + serial).isdigit():
        return False
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _card_brand_ok(digits: str) -> bool:
    # Issuer prefixes and lengths: Luhn alone passes one random number in ten, the IIN table turns away
    # most timestamps, barcodes and account numbers that would otherwise pass by chance.
    n, p2, p3, p4 = len(digits), int(digits[:2]), int(digits[:3]), int(digits[:4])
    if digits[0] == "4":
        return n in (13, 16, 19)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16
    if p2 in (34, 37):
        return n == 15
    if p2 in (36, 38, 39) or 300 <= p3 <= 305:
        return 14 <= n <= 19
    if 3528 <= p4 <= 3589 or p2 in (62, 65) or p4 == 6011 or 644 <= p3 <= 649:
        return 16 <= n <= 19
    return (p2 == 50 or 56 <= p2 <= 69) and 16 <= n <= 19  # Maestro; its rare 12-15 digit cards are left out


def card_ok(number: str) -> bool:
    """Luhn plus issuer prefix/length; `number` as written (spaces or dashes between groups allowed)."""
    digits = number.replace(" ", "").replace("-", "")
    if not (digits.isascii() and digits.isdigit()):
        return False
    # Unspaced, 13 digits is far more often an EAN-13 barcode or a millisecond timestamp than a retired
    # 13-digit Visa, and 17-19 digits a random seed or snowflake id than a card; only UnionPay (62) is
    # commonly written that long without spaces.
    if digits == number and (len(digits) == 13 or (len(digits) > 16 and digits[:2] != "62")):
        return False
    if not 13 <= len(digits) <= 19 or not _card_brand_ok(digits) or not luhn_ok(digits):
        return False
    # An 18-digit string with a birth date where a CN ID has one is a mistyped ID, not a card.
    return not (len(digits) == 18 and _plausible_birth_date(digits[6:14]))


def ipv4_ok(addr: str) -> bool:
    """Four octets 0-255 without leading zeros ("010" is octal to some parsers and a code to people)."""
    octets = addr.split(".")
    if any(len(o) > 1 and (o[0] == "0" or int(o) > 255) for o in octets):
        return False
    # "1.0.0.0", "2.5.4.6", "3.4.1.1" are assembly versions, OIDs and section numbers far more often
    # than hosts; the all-same public resolvers (1.1.1.1, 8.8.8.8) are kept.
    return len(addr) > 7 or len(set(octets)) == 1


_VERSION_WORDS = ("version", "release", "build", "ver.", "firmware")
_WORD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")  # ASCII \w


def _mixed(token: str) -> bool:
    # Real keys are random base62: a long body without a digit, an upper and a lower case letter is a slug
    # such as "sk-learn-compatible-estimators", not a credential.
    return (any(c.isdigit() for c in token) and any(c.isupper() for c in token)
            and any(c.islower() for c in token))


# ---------------------------------------------------------------- patterns

_A = re.ASCII
# Digits glued to a word, a sign, a path, a currency or another dotted/dashed number belong to something
# else. (Space-separated neighbours are judged after matching: see _not_in_spaced_run.)
_LB_DIGIT = r"(?<![\w+\-./#$%€£¥@]\d)(?<!\d[.\-]\d)"
_RB_DIGIT = r"(?![\w@]|[.\-/:]\d)"
_RB_GROUPED = r"(?![\w@*^]|[.\-/:]?\d)"  # nor a factor in a formula

# E-mail: the domain is matched forward from each '@', the local part walked backwards over _LOCAL_CHARS.
_EMAIL_DOMAIN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+(?:[a-z]{2,24}|[A-Z]{2,24})"
                           r"(?![\w\-]|\.[A-Za-z0-9])", _A)
_LOCAL_CHARS = _WORD_CHARS | frozenset("%+-.")
_CARD = re.compile(r"\d" + _LB_DIGIT + r"(?:\d{3}(?P<s>[ \-])\d{4}(?P=s)\d{4}(?P=s)\d{1,4}(?:(?P=s)\d{1,3})?"
                   r"|\d{3}(?P<t>[ \-])\d{6}(?P=t)\d{4,5}|\d{12,18})" + _RB_DIGIT, _A)
_SSN = re.compile(r"\d" + _LB_DIGIT + r"\d\d-\d\d-\d{4}" + _RB_DIGIT, _A)
_CN_ID = re.compile(r"[1-9]" + _LB_DIGIT + r"\d{16}[\dXx]" + _RB_DIGIT, _A)
_IPV4 = re.compile(r"\d(?<![\w.]\d)\d{0,2}(?:\.\d{1,3}){3}(?![\w]|\.\d)", _A)
# IPv6 has "::" or seven colons between hex groups; find that cheaply (a literal ':' first, so times like
# 12:48:56 cost one failed step), widen it to the address, let ipaddress decide.
_V6_HINT = re.compile(r":(?::|[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){6})", _A)
_V6_CHARS = frozenset("0123456789abcdefABCDEF:.")
_V6_TAIL = re.compile(r"[0-9A-Fa-f:.]*")
_SLICE_LIKE = re.compile(r"\d*::\d*")  # a[100::2000]; addresses written by people have hex or more groups
# Groups of four, spaced or not; the exact end is fixed from the country's length later.
_IBAN = re.compile(r"[A-Z](?<![\w][A-Z])[A-Z]\d\d(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?", _A | re.I)

_PHONE_INTL = re.compile(
    r"(?:\((?<![\w(]\()\+[1-9]\d{0,2}\)|\+(?<![\w+(]\+)[1-9]\d{0,2})"  # +44 or (+44)
    r"(?:[ .\-]?\(0\))?(?:[ .\-]?\(\d{1,5}\))?(?:[ .\-]?\d++){1,6}+(?![\w@]|[.\-/:]?\d)",
    _A,
)
_PHONE_PAREN = re.compile(
    r"\((?<![\w(]\()(?:0\d{1,4}|[1-9]\d{1,2})\)[ .\-]?\d++(?:[ .\-]\d++){0,3}+" + _RB_GROUPED,
    _A,
)
# National formats, one scan: the first digit is matched by the charset, the alternative by a lookbehind.
_PHONE_NATIONAL = re.compile(
    r"\d" + _LB_DIGIT + r"(?:"
    r"(?<=1)(?P<a>[ .\-])[2-9]\d\d(?P=a)[2-9]\d\d(?P=a)\d{4}"  # 1-415-555-0132
    r"|(?<=[2-9])\d\d(?P<b>[ .\-])[2-9]\d\d(?P=b)\d{4}"  # 415-555-0132, 415.555.0132
    r"|(?<=1)[3-9]\d(?:\d{8}|(?P<c>[ \-])\d{4}(?P=c)\d{4})"  # CN mobile 138 0013 8000
    r"|(?<=0)[1-9]\d{0,3}[ \-/]\d{3,4}[ \-]?\d{3,4}"  # trunk 0: 020 7946 0958, 030/12345678
    r"|(?<=0)[1-9](?P<d>[ .\-])\d\d(?:(?P=d)\d\d){3}"  # 06 12 34 56 78
    r"|(?<=0)[1-9]\d{9}"  # 07700900123: bare 11 digits is the mobile length in GB, JP, KR, TR, NG
    r"|(?<=0)0[1-9]\d{0,2}(?:[ .\-]\(0\))?(?:[ .\-]\d++){1,6}+"  # 0044 20 7946 0958
    r")" + _RB_GROUPED,
    _A,
)

# (trigger substrings, pattern); a group named "b" is a key body that must look random (see _mixed).
_SECRET_PATTERNS: tuple[tuple[tuple[str, ...], re.Pattern[str]], ...] = (
    (("AKIA", "ASIA"), re.compile(r"A(?<![\w]A)(?:KIA|SIA)[A-Z0-9]{16}(?![A-Za-z0-9])", _A)),
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
     re.compile(r"g(?<![\w\-]g)(?:h[pousr]|ithub_pat)_(?P<b>[A-Za-z0-9_]{22,255})(?![\w\-])", _A)),
    (("xox",),
     re.compile(r"xox(?<![\w\-]xox)(?=[\w\-]{17})[abpr]-[0-9A-Za-z]+(?:-[0-9A-Za-z]+){1,5}(?![\w\-])", _A)),
    (("sk-",), re.compile(r"sk-(?<![\w\-]sk-)(?:proj-)?(?P<b>[A-Za-z0-9_\-]{20,255})(?![\w\-])", _A)),
    (("_live_",), re.compile(r"[spr]k_live_(?<![\w\-][spr]k_live_)(?P<b>[A-Za-z0-9]{16,255})(?![\w\-])", _A)),
    (("AIza",), re.compile(r"AIza(?<![\w\-]AIza)[0-9A-Za-z_\-]{35}(?![\w\-])", _A)),
    (("eyJ",), re.compile(r"eyJ(?<![\w\-.]eyJ)[\w\-]{8,}\.eyJ[\w\-]{8,}\.[\w\-]{16,}(?![\w\-.])", _A)),
    # The body may not contain "-----", so each BEGIN scans only to the next marker (a lazy .*? to END
    # would rescan the text once per BEGIN). A block cut off before its END line (truncated paste) still
    # leaks the key, so it is taken too: header plus the base64 and "Proc-Type:"-style lines after it.
    (("PRIVATE KEY-----",),
     re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?:(?:[^-]|-(?!----))*+"
                r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----"
                r"|(?:\r?\n(?:[A-Za-z0-9+/=]{16,}|[A-Za-z\-]+: [^\r\n]*)?)*)", _A)),
)

_KEY_MATERIAL = re.compile(r"[A-Za-z0-9+/=]{32}")
_PLAIN_TRIGGERS = tuple((t, p) for triggers, p in _SECRET_PATTERNS for t in triggers if "_" not in t)
_UNDERSCORE_TRIGGERS = tuple((t, p) for triggers, p in _SECRET_PATTERNS for t in triggers if "_" in t)

# One scan finds every place a digit-based type could start: a run of >= 4 digits joined by at most two
# separators, or the check digits of an IBAN head ("GB82" before "WEST"). The specific patterns then run
# only on those windows, so text with few numbers pays for a single pass instead of one per type.
_REGION = re.compile(r"\d(?:(?:[ .\-()/]{0,2}\d){3,}|(?<=[A-Za-z]{2}\d)\d(?= ?[A-Za-z0-9]{4}))", _A)
# Window slack: the longest lookbehind context before a match and lookahead after it. A window's end is
# an end of string to `re`, so it must reach past every character a closing lookahead inspects. An IBAN
# window is 42 characters from its country code: 34 characters plus the spaces between groups.
_BEFORE, _AFTER = 3, 3

# ---------------------------------------------------------------- detectors: (text, lo, hi) -> spans

Span = tuple[int, int]
Detector = Callable[[str, int, int], list[Span]]  # (text, window start, window end) -> spans
Context = Callable[[str, int, int], bool]  # (text, match start, match end) -> keep?


def _emails(text: str) -> Iterator[Span]:
    # Anchored at each '@' (a scanning pattern would start at every word, and mention-heavy text such as
    # "@alice @bob" would make a window search per '@' crawl). RFC 5321 caps the local part at 64.
    pos = 0
    while (at := text.find("@", pos)) != -1:
        pos = at + 1
        domain = _EMAIL_DOMAIN.match(text, at + 1)
        if domain is None:
            continue
        start = at
        while start > 0 and at - start <= 64 and text[start - 1] in _LOCAL_CHARS:
            start -= 1
        local = text[start:at]
        if local and at - start <= 64 and local[0] != "." and local[-1] != "." and ".." not in local:
            yield start, domain.end()
            pos = domain.end()


def _secrets(text: str) -> list[Span]:
    # Substring tests run at memory speed, faster than any regex gate measured here; '_' is rare in prose,
    # so the GitHub/Stripe prefixes are only looked for when there is one.
    todo = [p for t, p in _PLAIN_TRIGGERS if t in text]
    if "_" in text:
        todo += [p for t, p in _UNDERSCORE_TRIGGERS if t in text]
    out = []
    for pattern in dict.fromkeys(todo):  # AKIA and ASIA share a pattern
        for m in pattern.finditer(text):
            if "b" in pattern.groupindex and not _mixed(m.group("b")):
                continue
            if m.group()[0] == "-" and not _KEY_MATERIAL.search(m.group()):
                continue  # code or docs that only mention the BEGIN/END lines
            out.append((m.start(), m.start() + len(m.group().rstrip())))
    return out


def _checked(
    pattern: re.Pattern[str], ok: Callable[[str], bool], context_ok: Context | None = None
) -> Detector:
    def detect(text: str, lo: int, hi: int) -> list[Span]:
        # search() rather than finditer(): most windows hold no match, and one search is half the cost.
        out = []
        m = pattern.search(text, lo, hi)
        while m is not None:
            if ok(m.group()) and (context_ok is None or context_ok(text, m.start(), m.end())):
                out.append(m.span())
            m = pattern.search(text, m.end(), hi)
        return out

    return detect


def _ibans(text: str, lo: int, hi: int) -> Iterator[Span]:
    for m in _IBAN.finditer(text, lo, hi):
        # Cut at the country's length: the pattern may have run on into the following word.
        cutter = _IBAN_CUT.get(m.group()[:2].upper())
        cut = cutter.match(m.group()) if cutter else None
        iban = cut.group() if cut else ""
        stop = m.start() + len(iban)
        if (iban.isupper() or iban.islower()) and not (stop < len(text) and text[stop] in _WORD_CHARS):
            if iban_ok(iban):  # all upper or all lower case: "De89 ..." is not how anyone writes one
                yield m.start(), stop


def _ipv6s(text: str) -> Iterator[Span]:
    n = len(text)
    pos = 0
    while (m := _V6_HINT.search(text, pos)) is not None:
        s = m.start()
        while s > 0 and text[s - 1] in _V6_CHARS:
            s -= 1
        pos = _V6_TAIL.match(text, m.end()).end()
        cand = text[s:pos].rstrip(".")
        if cand.endswith(":") and not cand.endswith("::"):  # "fe80::1: ..." colon belongs to the prose
            cand = cand[:-1]
        stop = s + len(cand)
        if (s and text[s - 1] in _WORD_CHARS) or (stop < n and text[stop] in _WORD_CHARS):
            continue  # std::vector, C++ scopes, hex inside identifiers
        if cand.count(":") < 2 or not any(c.isdigit() for c in cand) or cand[0] == ".":
            continue
        # Real addresses carry a 3-4 digit routing group (2001:, fe80:); "1:2:3:4:5:6:7:8" is a ratio and
        # "x[1::2]" a Python slice. Loopback "::1" is the one short form worth keeping.
        if cand != "::1" and (max(len(g) for g in cand.split(":")) < 3 or _SLICE_LIKE.fullmatch(cand)):
            continue
        try:
            ipaddress.IPv6Address(cand)
        except ValueError:
            continue
        yield s, stop


def _not_a_version(text: str, start: int, end: int) -> bool:
    return not text[max(0, start - 12):start].lower().rstrip(" :=#").endswith(_VERSION_WORDS)


def _not_in_spaced_run(text: str, start: int, end: int) -> bool:
    # A space-grouped match with another digit group one space before or after is a slice of a longer
    # number ("0044 0532 0130 00" inside a bad IBAN); dashed or bare matches in a spaced list are fine.
    if " " not in text[start:end]:
        return True
    before = start >= 2 and text[start - 1] == " " and text[start - 2].isdigit() and text[start] != "("
    return not before and not (end + 1 < len(text) and text[end] == " " and text[end + 1].isdigit())


def _phone_ok(g: str) -> bool:
    n = sum(map(str.isdigit, g))
    if "+" in g[:2]:  # +44 ... or (+44) ...: E.164 caps numbers at 15 digits; one dot is a decimal (+352.6)
        return 8 <= n <= 15 and g.count(".") != 1
    if g[0] == "(":
        return 9 <= n <= 12
    if g.isdigit() and g.endswith("00000"):  # bare 11 digits ending 00000: a round number, not a line
        return False
    # The trunk-0 and 00-prefix forms allow free grouping, so their length is bounded here.
    return g[0] != "0" or (9 <= n <= 12 if g[1] != "0" else 10 <= n <= 17)


# (type, detector, shortest region that can hold one, a character its window must contain). Most regions
# are years, amounts and counts; these two tests spare them most regex calls.
_DIGIT_DETECTORS: tuple[tuple[str, Detector, int, str], ...] = (
    ("CN_ID", _checked(_CN_ID, cn_id_ok), 17, ""),
    ("CREDIT_CARD", _checked(_CARD, card_ok, _not_in_spaced_run), 13, ""),
    ("SSN", _checked(_SSN, ssn_ok), 11, "-"),
    ("IP_ADDRESS", _checked(_IPV4, ipv4_ok, _not_a_version), 7, "."),
    ("PHONE", _checked(_PHONE_INTL, _phone_ok), 7, "+"),
    ("PHONE", _checked(_PHONE_PAREN, _phone_ok, _not_in_spaced_run), 11, "("),
    ("PHONE", _checked(_PHONE_NATIONAL, _phone_ok, _not_in_spaced_run), 11, ""),
)


def _digit_spans(text: str, found: list[tuple[int, int, int, str]]) -> None:
    first = _REGION.search(text)  # most short texts have none; search() is cheaper than an empty finditer
    if first is None:
        return
    n = len(text)
    for region in _REGION.finditer(text, first.start()):
        s, e = region.span()
        if s >= 2 and text[s - 2:s].isalpha() and text[s - 2:s].isascii():
            found.extend((_PRIORITY["IBAN"], a, b, "IBAN") for a, b in _ibans(text, s - 2, min(n, s + 40)))
        size = e - s
        if size < 7:
            continue
        lo, hi = max(0, s - _BEFORE), min(n, e + _AFTER)
        for name, detect, min_size, needs in _DIGIT_DETECTORS:
            if size >= min_size and (not needs or text.find(needs, lo, hi) != -1):
                found.extend((_PRIORITY[name], a, b, name) for a, b in detect(text, lo, hi))


# ---------------------------------------------------------------- public API


def find_pii(text: str) -> list[PiiMatch]:
    """All PII spans in `text`, non-overlapping and sorted by start; specific types win overlaps."""
    found = [(_PRIORITY["SECRET"], s, e, "SECRET") for s, e in _secrets(text)]
    if "@" in text:
        found.extend((_PRIORITY["EMAIL"], s, e, "EMAIL") for s, e in _emails(text))
    _digit_spans(text, found)
    if ":" in text:
        found.extend((_PRIORITY["IP_ADDRESS"], s, e, "IP_ADDRESS") for s, e in _ipv6s(text))
    if not found:
        return []
    found.sort(key=lambda f: (f[0], f[1], f[1] - f[2]))
    starts: list[int] = []
    kept: list[tuple[int, int, str]] = []
    for _, s, e, name in found:
        i = bisect_right(starts, s)
        if (i and kept[i - 1][1] > s) or (i < len(kept) and kept[i][0] < e):
            continue
        starts.insert(i, s)
        kept.insert(i, (s, e, name))
    return [PiiMatch(name, s, e, text[s:e]) for s, e, name in kept]


def redact(text: str, matches: list[PiiMatch] | None = None) -> str:
    """`text` with every match replaced by its typed placeholder, e.g. `<EMAIL>`."""
    if matches is None:
        matches = find_pii(text)
    if not matches:
        return text
    out: list[str] = []
    pos = 0
    for m in sorted(matches, key=lambda m: m.start):
        if m.start >= pos:  # a caller's overlapping span is already covered by the earlier one
            out += (text[pos:m.start], f"<{m.type}>")
            pos = m.end
    out.append(text[pos:])
    return "".join(out)


def count_by_type(matches: Iterable[PiiMatch]) -> dict[str, int]:
    """Matches per type, only the types that occur (so it can feed a Counter without zero entries)."""
    return dict(Counter(m.type for m in matches))
