"""Presence: who of a user's peers is online (docs/architecture.md, Presence)."""

from chatd.presence.service import PresenceService as PresenceService
from chatd.presence.state import LocalPresence as LocalPresence
from chatd.presence.state import PresenceState as PresenceState

__all__ = ["LocalPresence", "PresenceService", "PresenceState"]
