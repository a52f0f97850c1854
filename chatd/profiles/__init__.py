"""User profiles (`{id, displayName}` per email + intent): the provider contract and providers."""

from chatd.profiles.base import Profile, ProfileProvider
from chatd.profiles.local import LocalProfileProvider

__all__ = ["LocalProfileProvider", "Profile", "ProfileProvider"]
