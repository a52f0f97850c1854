"""``chatd check-config --connect``: try each configured dependency once, before a deploy.

One `Probe` per dependency the config names (the database always; RabbitMQ, the profile
service, the JWKS or the public key file when configured), tried one after the other, each
bounded by its own timeout. A failure reads exactly as `chatd serve` would report it (the
same `StartupError` line), so what the check says is what the start would say.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import trio

from chatd.auth.keys import KeyFileError, load_public_key
from chatd.auth.service import ServiceTokens
from chatd.auth.tokens import fetch_jwks
from chatd.config import Config, RabbitMQConfig, RedisConfig, redact_url
from chatd.domain.errors import Unavailable
from chatd.startup import StartupError, sentence
from chatd.startup.database import database_where, lost_database, newer_schema, open_failed
from chatd.startup.local import key_error
from chatd.storage import OpenError, SchemaError, UnknownMigrations, store_from_config

#: A made-up user the profile service cannot know: its 404 proves it answers and takes our token.
PROBE_EMAIL = "check-config@chatd.invalid"
PROBE_INTENT = "check-config"


@dataclass(frozen=True, slots=True)
class Probe:
    """One dependency tried: `name` and `where`, and `detail` on success or `error`."""

    name: str
    where: str
    detail: str = ""
    error: StartupError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def line(self) -> str:
        """``database 127.0.0.1:5432/chat: ok, schema current`` or ``database: FAILED: <the
        line chatd serve would print, which names the address>``."""
        if self.error is not None:
            return f"{self.name}: FAILED: {self.error}"
        return f"{self.name} {self.where}: ok, {self.detail}"


async def probe_all(config: Config) -> list[Probe]:
    """Try every dependency `config` names, in start order; never raises for a failed one."""
    probes = [await probe_database(config)]
    if config.rabbitmq is not None:
        probes.append(await probe_rabbitmq(config.rabbitmq))
    if config.redis is not None:
        probes.append(await probe_redis(config.redis))
    if config.profiles.provider == "remote":
        probes.append(await probe_profiles(config))
    if config.auth.jwks_url is not None or config.auth.public_key_file is not None:
        probes.append(await probe_token_keys(config))
    return probes


async def probe_database(config: Config) -> Probe:
    """Connect once (no start-up wait) and compare the schema with this build's migrations."""
    database = config.database
    where = database_where(database)
    if database.sqlite_path is not None and not database.sqlite_path.exists():
        return Probe("database", where, "no file yet: `chatd serve` creates it")  # nor do we
    store = store_from_config(database)
    try:
        await store.open()
    except OpenError as exc:
        return Probe("database", where, error=open_failed(exc, database, waited=False))
    try:
        await store.check_schema()
        detail = "schema current"
    except UnknownMigrations as exc:
        return Probe("database", where, error=newer_schema(exc, database))
    except SchemaError as exc:
        state = exc.message.partition(":")[0].removeprefix("database ")
        detail = f"{state}: `chatd migrate` or `chatd serve` applies the migrations"
    except Unavailable as exc:  # gone between the connect and the query
        return Probe("database", where, error=lost_database(exc, database))
    finally:
        await store.aclose()
    return Probe("database", where, detail)


async def probe_rabbitmq(rabbitmq: RabbitMQConfig) -> Probe:
    """Open and close one AMQP connection (in a thread: pika blocks)."""
    from chatd.bridge.probe import amqp_where, probe_amqp

    where = amqp_where(rabbitmq.url)
    try:
        await trio.to_thread.run_sync(probe_amqp, rabbitmq.url)
    except ConnectionError as exc:
        error = StartupError(
            "rabbitmq",
            "cannot connect to RabbitMQ at",
            where,
            sentence(str(exc)),
            "chatd serve would start without it and keep "
            "retrying; check [rabbitmq] url or CHATD_RABBITMQ_URL",
        )
        return Probe("rabbitmq", where, error=error)
    return Probe("rabbitmq", where, "connected")


async def probe_redis(config: RedisConfig) -> Probe:
    """One PING (the scripts loaded too), bounded by ``[redis] timeout``."""
    from chatd.redis_tier import RedisTier

    where = redact_url(config.url)
    tier = RedisTier(config.url, key_prefix=config.key_prefix, pool_size=1, timeout=config.timeout)
    try:
        if await tier.ping():
            return Probe("redis", where, f"answers (keys under {config.key_prefix!r})")
    finally:
        await tier.aclose()
    error = StartupError(
        "redis",
        "cannot reach Redis at",
        where,
        sentence(tier.last_error),
        "chatd serve would start without it (profiles and rate limits per "
        "instance) and keep retrying; check [redis] url or CHATD_REDIS_URL",
    )
    return Probe("redis", where, error=error)


async def probe_profiles(config: Config) -> Probe:
    """Ask the profile service for a user it cannot know, with our service token: 404 (or a
    profile) means it answers and accepts the token; 401/403 means it refuses our key."""
    from chatd.profiles.remote import profile_url

    p = config.profiles
    where = p.url or ""
    hint = "check [profiles] url or CHATD_PROFILE_SERVICE_URL"
    try:
        tokens = ServiceTokens.from_config(p)
    except KeyFileError as exc:
        return Probe("profiles", where, error=key_error(exc, config, service_key=True))
    try:
        with trio.fail_after(p.timeout):
            async with httpx.AsyncClient(timeout=p.timeout) as client:
                response = await client.get(
                    profile_url(where, PROBE_EMAIL, PROBE_INTENT),
                    headers={"Authorization": tokens.authorization()},
                )
    except (httpx.HTTPError, trio.TooSlowError) as exc:
        slow = isinstance(exc, trio.TooSlowError | httpx.TimeoutException)
        cause = (
            f"no answer within {p.timeout:g} s"
            if slow
            else sentence(str(exc) or type(exc).__name__)
        )
        error = StartupError("profiles", "cannot reach the profile service at", where, cause, hint)
        return Probe("profiles", where, error=error)
    status = response.status_code
    if status in (200, 404):
        return Probe("profiles", where, f"answers and accepts our service token (HTTP {status})")
    if status in (401, 403):
        hint = (
            "check [profiles] service_private_key_file, kid, service_name and audience "
            "against what the profile service trusts"
        )
    error = StartupError(
        "profiles", "the profile service refused a look-up at", where, f"HTTP {status}", hint
    )
    return Probe("profiles", where, error=error)


async def probe_token_keys(config: Config) -> Probe:
    """Fetch the JWKS (or load the public key file) that client tokens are verified with."""
    auth = config.auth
    try:
        if auth.jwks_url is not None:
            keys = await trio.to_thread.run_sync(
                lambda: fetch_jwks(auth.jwks_url or "", timeout=auth.jwks_timeout)
            )
            return Probe("jwks", auth.jwks_url, f"{len(keys)} key(s): {', '.join(keys.kids)}")
        assert auth.public_key_file is not None
        load_public_key(auth.public_key_file)
        return Probe("public key", str(auth.public_key_file), "RSA public key")
    except KeyFileError as exc:
        name = "jwks" if auth.jwks_url is not None else "public key"
        return Probe(name, exc.where, error=key_error(exc, config))


__all__ = [
    "Probe",
    "probe_all",
    "probe_database",
    "probe_profiles",
    "probe_rabbitmq",
    "probe_redis",
    "probe_token_keys",
]
