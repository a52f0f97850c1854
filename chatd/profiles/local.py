"""Profiles without a profile service, for the embedded default and tests.

Every syntactically valid email exists. Ids are uuid5 of ``"{intent}:{email}"`` so they are
stable across restarts and instances (sessions store them) with no table to keep; the display
name is derived from the local part, which is good enough to tell people apart in a demo.
"""

from __future__ import annotations

import re
import uuid

from chatd.domain.errors import NotFound
from chatd.domain.rules import is_email, normalize_email
from chatd.profiles.base import Profile

# A fixed namespace: changing it would orphan every stored session of a local deployment.
PROFILE_NAMESPACE = uuid.UUID("6f1c3a52-2d4e-5b8a-9c71-0e4d8b2f6a13")

_SEPARATORS = re.compile(r"[._+\-]+")


def display_name_for(email: str) -> str:
    """``"jane.doe_x@example.com"`` -> ``"Jane Doe X"``; the whole local part if nothing remains."""
    local = email.partition("@")[0]
    words = [word for word in _SEPARATORS.split(local) if word]
    return " ".join(word.capitalize() for word in words) or local


def profile_id_for(email: str, intent: str) -> str:
    """The stable profile id of `email` in `intent` (a UUID string)."""
    return str(uuid.uuid5(PROFILE_NAMESPACE, f"{intent}:{email}"))


class LocalProfileProvider:
    """A `ProfileProvider` that knows every valid email and needs no I/O."""

    async def lookup(self, email: str, intent: str) -> Profile:
        """The derived profile; raises `NotFound` if `email` is not a valid address."""
        email = normalize_email(email)
        if not is_email(email):
            raise NotFound(f"unknown user {email!r}")
        return Profile(id=profile_id_for(email, intent), display_name=display_name_for(email))
