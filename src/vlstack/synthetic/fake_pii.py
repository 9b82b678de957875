"""Fake personal data that passes the real format checks, for injecting PII defects.

A privacy filter that validates checksums (Luhn for cards, ISO 7064 MOD 11-2 for
Chinese resident IDs) must still catch these, so they are built to be valid: a
test of the filter is only meaningful against values a real one would see.
"""

from __future__ import annotations

import random
from collections.abc import Callable

CN_REGIONS = ("110101", "310104", "440305", "510107", "330106", "420102")
"""Real administrative division codes: Beijing Dongcheng, Shanghai Xuhui, Shenzhen Nanshan, Chengdu Wuhou,
Hangzhou Xihu, Wuhan Jiang'an."""
_CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_MOBILE_PREFIXES = ("130", "135", "138", "139", "150", "158", "177", "186", "189", "199")
_FIRST = ("alice", "bob", "wei", "li.na", "carlos", "priya", "zhang", "maria")
_DOMAINS = ("example.com", "mail.example.org", "example.cn", "corp.example.net")
_PUBLIC_FIRST_OCTETS = tuple(o for o in range(11, 224) if o not in (127, 172, 192))
"""First octets outside loopback and the private ranges, so no filter may call the address harmless."""


def luhn_check_digit(digits: str) -> str:
    """The digit that makes `digits` + it pass the Luhn check."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return str(-total % 10)


def cn_id_check_char(first17: str) -> str:
    """The 18th character of a Chinese resident ID (GB 11643-1999, ISO 7064 MOD 11-2)."""
    return "10X98765432"[sum(int(d) * w for d, w in zip(first17, _CN_ID_WEIGHTS)) % 11]


def fake_email(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)}{rng.randint(1, 999)}@{rng.choice(_DOMAINS)}"


def fake_phone(rng: random.Random) -> str:
    """A North American number in one of the usual spellings."""
    area, exchange, line = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
    spellings = (f"+1 {area}-{exchange}-{line:04d}", f"({area}) {exchange}-{line:04d}", f"{area}.{exchange}.{line:04d}")
    return rng.choice(spellings)


def fake_cn_mobile(rng: random.Random) -> str:
    number = rng.choice(_CN_MOBILE_PREFIXES) + f"{rng.randint(0, 99_999_999):08d}"
    return rng.choice((number, f"+86 {number}", f"{number[:3]} {number[3:7]} {number[7:]}"))


def fake_cn_id(rng: random.Random) -> str:
    birth = f"{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    first17 = rng.choice(CN_REGIONS) + birth + f"{rng.randint(0, 999):03d}"
    return first17 + cn_id_check_char(first17)


def fake_credit_card(rng: random.Random) -> str:
    """A 16-digit Visa or Mastercard number with a valid Luhn digit, plain or in groups of four."""
    body = rng.choice(("4", "51", "52", "53", "54", "55"))
    body += "".join(str(rng.randint(0, 9)) for _ in range(15 - len(body)))
    number = body + luhn_check_digit(body)
    return rng.choice((number, " ".join(number[i : i + 4] for i in range(0, 16, 4))))


def fake_ip(rng: random.Random) -> str:
    return f"{rng.choice(_PUBLIC_FIRST_OCTETS)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


FAKERS: dict[str, Callable[[random.Random], str]] = {
    "email": fake_email,
    "phone": fake_phone,
    "cn_mobile": fake_cn_mobile,
    "cn_id": fake_cn_id,
    "credit_card": fake_credit_card,
    "ip": fake_ip,
}
