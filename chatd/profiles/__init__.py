"""User profiles (`{id, displayName}` per email + intent): the provider contract and providers.

`local` derives profiles without I/O (the embedded default); `remote` asks the profile service
(`RemoteProfileProvider`) behind a TTL cache with single-flight and a circuit breaker
(`CachedProfiles`, `CircuitBreaker`), with an optional second level shared in Redis
(`SharedProfileCache`).
"""

from chatd.profiles.base import Profile, ProfileProvider
from chatd.profiles.breaker import BreakerState, CircuitBreaker
from chatd.profiles.cache import CachedProfiles
from chatd.profiles.local import LocalProfileProvider
from chatd.profiles.remote import RemoteProfileProvider
from chatd.profiles.shared import SharedProfileCache

__all__ = [
    "BreakerState",
    "CachedProfiles",
    "CircuitBreaker",
    "LocalProfileProvider",
    "Profile",
    "ProfileProvider",
    "RemoteProfileProvider",
    "SharedProfileCache",
]
