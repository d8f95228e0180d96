"""The characters credentials are tested with, and every form a secret may be printed in."""

from __future__ import annotations

import string
from urllib.parse import quote

SPECIALS = [c for c in string.punctuation + " " if c not in "%"] + ["%", "é", "密", "\u00a0"]


def forms(secret: str) -> set[str]:
    """Every form a secret may be printed in."""
    return {secret, quote(secret, safe=""), quote(secret, safe=":@!$&'()*+,;=")}
