"""`PresenceService`: follows this instance's STOMP sessions and tells peers who is online.

Input: the broker runtime's `on_principal_active(email, active)` (a user's first session on
this instance connected, or the last one ended), handled synchronously by the pure
`GraceTracker`. The runner task (`run`, a supervisor part) then asks the `PresenceState`
whether that changes the user's presence anywhere and, if so, publishes
`{"event":"presence","email","online","lastSeen"}` to the `/user/queue/presence` of each of the
user's peers (the other participants of their chats, `Store.peers`; only those online when
the state sees every instance, i.e. Redis is up). Publishing
goes through `publish`, which the wiring sets to "deliver here and relay to the other
instances" (the RabbitMQ bridge's ephemeral relay), so a peer on another instance gets it too.

Readers: the SUBSCRIBE hook (`snapshot`), `GET /api/chat/presence` (`query`) and the session
list (`of`); opening a chat (`introduce`) tells two new peers about each other at once. Only
peers ever learn a user's presence: a stranger's email is left out of every answer, never
refused by name (docs/security.md). `enabled` False turns all of it off: no tracking, no
publishing, empty answers.

Time: the grace period and the maintenance period run on trio's clock (tests use
`MockClock`); `lastSeen` values come from `clock` (wall time, injectable).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final

import trio

from chatd.domain.destinations import UserQueue, user_queue
from chatd.domain.errors import BadRequest
from chatd.domain.models import compact_json
from chatd.domain.presence import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_MAX_PEERS,
    DEFAULT_MAX_QUERY,
    DEFAULT_TTL_SECONDS,
    GraceTracker,
    Presence,
)
from chatd.domain.rules import require_email
from chatd.presence.state import LocalPresence, PresenceState
from chatd.storage.base import Store

log = logging.getLogger("chatd.presence")

Clock = Callable[[], datetime]
#: (user key, JSON body): deliver a presence update to a user's connections everywhere.
Publish = Callable[[str, bytes], None]
#: Seconds the runner waits after a failed step (the store or Redis down) before retrying.
RETRY_DELAY: Final = 1.0


def utc_now() -> datetime:
    return datetime.now(UTC)


class PresenceService:
    """Presence tracking and answers for one instance; see the module docstring."""

    def __init__(
        self,
        store: Store,
        state: PresenceState | None = None,
        *,
        enabled: bool = True,
        grace: float = DEFAULT_GRACE_SECONDS,
        ttl: float = DEFAULT_TTL_SECONDS,
        max_peers: int = DEFAULT_MAX_PEERS,
        max_query: int = DEFAULT_MAX_QUERY,
        clock: Clock = utc_now,
        publish: Publish | None = None,
    ) -> None:
        self.store = store
        self.state: PresenceState = state if state is not None else LocalPresence()
        self.enabled = enabled
        self.grace = grace
        #: Entries are renewed three times per TTL: one late renewal never expires them.
        self.maintain_every = ttl / 3
        self.max_peers = max_peers
        self.max_query = max_query
        self.clock = clock
        self.tracker = GraceTracker(grace)
        self.publish = publish
        #: Updates published, and steps that failed (metrics, tests).
        self.announced = 0
        self.failures = 0
        #: True while the runner waits for work (nothing of what it was told is in hand).
        self.idle = False
        self._wake = trio.Event()
        self._stopping = False

    @property
    def local_users(self) -> int:
        """Users this instance counts as online (metrics)."""
        return len(self.tracker.present())

    # -- input ---------------------------------------------------------------------------------

    def principal_active(self, email: str, active: bool) -> None:
        """`BrokerRuntime.on_principal_active`: never blocks, never raises."""
        if not self.enabled:
            return
        if active:
            self.tracker.connected(email)
        else:
            self.tracker.disconnected(email, trio.current_time(), self.clock())
        self._wake.set()

    # -- the runner ----------------------------------------------------------------------------

    @property
    def summary(self) -> str:
        """For the ready line: ``presence=local``, ``presence=redis`` or ``presence=off``."""
        return f"presence={self.state.kind}" if self.enabled else "presence=off"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Apply changes as they come and grace periods as they end, and renew this instance's
        entries every TTL/3; until cancelled or `stop`ped (then this instance's users lapse
        after the grace period, see `PresenceState.retire`)."""
        if not self.enabled:
            task_status.started()
            while not self._stopping:
                await self._wake.wait()
                self._wake = trio.Event()
            return
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep_renewing)
                await self._steps()
                nursery.cancel_scope.cancel()
        finally:
            # Best effort: when the whole server is cancelled the Redis tier may be closing
            # under us, and then our entries simply lapse after the TTL.
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await self.state.retire(self.grace)
                except Exception as exc:
                    log.debug("presence: could not retire this instance's entries: %r", exc)

    async def _steps(self) -> None:
        next_maintain = trio.current_time()
        while not self._stopping:
            self._wake = trio.Event()
            try:
                await self.step()
                if trio.current_time() >= next_maintain:
                    next_maintain = trio.current_time() + self.maintain_every
                    await self.maintain()
            except Exception:
                self.failures += 1
                log.exception("presence update failed; retrying in %g s", RETRY_DELAY)
                await trio.sleep(RETRY_DELAY)
                continue
            wake_at = next_maintain
            if (deadline := self.tracker.next_deadline()) is not None:
                wake_at = min(wake_at, deadline)
            self.idle = True
            with trio.move_on_at(wake_at):
                await self._wake.wait()
            self.idle = False

    async def _keep_renewing(self) -> None:
        """Renew this instance's entries every TTL/3, whatever `_steps` is doing.

        Why apart: after a restart the runner announced 1 500 arrivals, one Redis call each,
        and renewed only between steps; under load (the soak) a step outlasted the lapse (2/3
        of the TTL) and the other instance declared every user of this one offline. A failed
        renewal is tried again after RETRY_DELAY, not a whole period later."""
        delay = self.maintain_every
        while True:
            await trio.sleep(delay)
            renewed = await self.state.renew(self.clock())
            delay = self.maintain_every if renewed else RETRY_DELAY

    def stop(self) -> None:
        """Finish after the step in hand (the supervisor's graceful stop)."""
        self._stopping = True
        self._wake.set()

    async def step(self) -> None:
        """Announce users who arrived and users whose grace period ended (arrivals first: a
        user who came and went is announced online, then offline)."""
        for email in self.tracker.arrivals():
            if await self.state.arrive(email):
                await self.announce(Presence(email, True))
        for email, seen_at in self.tracker.due(trio.current_time()):
            if self.tracker.is_present(email):
                continue  # came back while an earlier step awaited
            if await self.state.leave(email, seen_at):
                await self.announce(Presence(email, False, seen_at))

    async def maintain(self) -> None:
        """Renew this instance's entries; announce users of dead instances as offline."""
        for presence in await self.state.maintain(self.tracker.present(), self.clock()):
            await self.announce(presence)

    async def announce(self, presence: Presence) -> None:
        """Publish `presence` to the user's peers; only to those online when the state sees
        every instance (the others have nobody to deliver to). When the store cannot say
        who the peers are, this one update is dropped (counted in `failures`): the runner
        goes on with the next change, and a peer's next snapshot or look-up shows the
        state."""
        try:
            await self._announce(presence)
        except Exception:
            self.failures += 1
            log.warning(
                "presence: could not tell the peers of a user that they are %s",
                "online" if presence.online else "offline",
                exc_info=True,
            )

    async def _announce(self, presence: Presence) -> None:
        if self.publish is None:
            return
        peers = await self.store.peers(presence.email, limit=self.max_peers)
        if peers and self.state.complete:  # skip peers connected nowhere
            online = await self.state.lookup(peers)
            peers = [peer for peer in peers if online[peer].online]
        body = compact_json(presence.to_json()).encode()
        for peer in peers:
            self.publish(user_queue(peer, UserQueue.PRESENCE), body)
            self.announced += 1

    async def introduce(self, first: str, second: str) -> None:
        """Two users just became peers (a chat between them was opened): tell each, if
        online, the other's presence, as a snapshot would have. Best effort, never raises
        for presence (the chat is open either way)."""
        if not self.enabled or self.publish is None:
            return
        try:
            found = await self.state.lookup([first, second])
        except Exception:
            log.exception("presence: introducing two peers failed")
            return
        for to, about in ((first, second), (second, first)):
            if found[to].online:
                self.publish(
                    user_queue(to, UserQueue.PRESENCE),
                    compact_json(found[about].to_json()).encode(),
                )
                self.announced += 1

    # -- readers -------------------------------------------------------------------------------

    async def snapshot(self, caller: str) -> list[Presence]:
        """The presence of each of the caller's peers, most recently active chat first."""
        if not self.enabled:
            return []
        peers = await self.store.peers(caller, limit=self.max_peers)
        found = await self.state.lookup(peers)
        return [found[p] for p in peers]

    async def query(self, caller: str, emails: object) -> list[Presence]:
        """`GET /api/chat/presence?emails=a,b`: the presence of those listed who are the
        caller's peers, in the order asked; anyone else is left out (never revealed as
        existing or not). Raises BadRequest for a malformed list or more than `max_query`."""
        if not isinstance(emails, str) or not emails.strip():
            raise BadRequest("emails must list at least one email, comma-separated")
        asked = list(dict.fromkeys(require_email(e, "emails") for e in emails.split(",")))
        if len(asked) > self.max_query:
            raise BadRequest(f"emails may list at most {self.max_query} addresses")
        if not self.enabled:
            return []
        peers = set(await self.store.peers(caller, limit=len(asked), among=asked))
        shown = [e for e in asked if e in peers]
        found = await self.state.lookup(shown)
        return [found[e] for e in shown]

    async def of(self, peers: Sequence[str]) -> dict[str, Presence]:
        """The presence of users the caller already knows are peers (their shared chats):
        the session list. Empty when presence is off."""
        if not self.enabled or not peers:
            return {}
        return await self.state.lookup(list(dict.fromkeys(peers)))
