"""Checksums and validators that tell real PII numbers from look-alikes (see `pii.py`).

Luhn and issuer prefixes for cards, the SWIFT registry lengths and mod-97 for IBANs, ISO 7064 and a real
birth date for Chinese ID numbers, the ranges the SSA never issues for SSNs, octet rules for IPv4. Each
takes the candidate text a pattern matched and answers yes or no.
"""

from __future__ import annotations

import re
from datetime import date

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


def iban_prefix(candidate: str) -> str:
    """The IBAN at the start of `candidate` cut at its country's length ('' for an unknown country)."""
    cutter = _IBAN_CUT.get(candidate[:2].upper())
    cut = cutter.match(candidate) if cutter else None
    return cut.group() if cut else ""


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
    """18-character resident ID: province code, real birth date, ISO 7064 MOD 11-2 check character.

    Spaces or dashes between groups (as copied from a card) are ignored."""
    number = number.replace(" ", "").replace("-", "")
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
