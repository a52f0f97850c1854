"""chatd configuration: one TOML file -> frozen dataclasses, overridden by ``CHATD_*`` variables.

Why so strict: a mistyped key that silently falls back to its default is how a production box
ends up running with dev keys. So an unknown section or key is an error, every value is type-
and range-checked, and every error names the key and where the value came from (the file, the
environment variable or the command-line flag).

Precedence, lowest first: defaults < file < environment < command-line flags (`overrides`).

Relative paths: a relative path written in a config file is resolved against the folder of that
file, so a config and the key files beside it move together and the result does not depend on
the working directory. A relative path from the environment, the command line or the defaults
stays relative, i.e. it means the working directory (``./chatd-data`` by default). The string
``{data_dir}`` in ``database.url`` is replaced by the final data dir.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Union
from urllib.parse import urlsplit, urlunsplit

from chatd.domain import jwk, presence, rules
from chatd.domain.models import ROWS_PER_MESSAGE


class ConfigError(Exception):
    """An invalid configuration; the message names the key and its origin, fit for operators."""


def parse_bind(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6) into a pair; raise ValueError if malformed."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or (":" in host and "[" not in value):
        raise ValueError(f"expected HOST:PORT (IPv6 as [addr]:PORT), got {value!r}")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {value!r}")
    return host, int(port)


def _check_bind(value: str) -> str | None:
    try:
        parse_bind(value)
    except ValueError as exc:
        return str(exc)
    return None


def _url(*schemes: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        parts = urlsplit(value)
        if parts.scheme.lower() not in schemes or not (parts.netloc or parts.path):
            return f"expected a {' or '.join(s + '://' for s in schemes)} URL, got {value!r}"
        return None

    return check


def _database_url(value: str) -> str | None:
    if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
        return None
    if _url("postgresql", "postgres")(value) is None:
        return None
    return f"expected postgresql://... or sqlite:///PATH, got {redact_url(value)!r}"


def _opt(
    default: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """A field with range limits or a validity check, read by the loader from its metadata."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "check": check})


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: listeners, data dir, lifecycle timeouts, STOMP heart-beats."""

    bind: str = _opt("127.0.0.1:8080", check=_check_bind)
    data_dir: Path = Path("chatd-data")
    demo_page: bool = True
    shutdown_grace: float = _opt(10.0, lo=0, hi=3600)
    keepalive_timeout: float = _opt(5.0, lo=0.1, hi=3600)
    listen_backlog: int = _opt(4096, lo=1, hi=65535)
    stomp_tcp_bind: str | None = _opt(None, check=_check_bind)
    heartbeat_send_ms: int = _opt(1_000, lo=0, hi=3_600_000)
    heartbeat_receive_ms: int = _opt(1_000, lo=0, hi=3_600_000)
    drain_delay: float = _opt(0.0, lo=0, hi=600)
    ws_one_frame_per_message: bool = False
    sockjs_enabled: bool = True
    sockjs_websocket: bool = True
    sockjs_heartbeat_seconds: float = _opt(25.0, lo=0.05, hi=3600)
    sockjs_disconnect_delay: float = _opt(5.0, lo=0.05, hi=3600)
    sockjs_response_limit: int = _opt(128 * 1024, lo=1024, hi=1 << 30)
    sockjs_max_sessions: int = _opt(10_000, lo=1, hi=10_000_000)
    sockjs_cookie_needed: bool = False
    reuse_port: bool = False

    @property
    def bind_address(self) -> tuple[str, int]:
        return parse_bind(self.bind)

    @property
    def stomp_tcp_address(self) -> tuple[str, int] | None:
        return None if self.stomp_tcp_bind is None else parse_bind(self.stomp_tcp_bind)


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """``[database]``: PostgreSQL or embedded SQLite; timeouts in seconds."""

    url: str = _opt("sqlite:///{data_dir}/chatd.sqlite3", check=_database_url)
    pool_size: int = _opt(10, lo=1, hi=1000)
    connect_timeout: float = _opt(5.0, lo=0.1, hi=600)
    pool_timeout: float = _opt(10.0, lo=0.1, hi=600)
    statement_timeout: float = _opt(30.0, lo=0, hi=3600)
    startup_timeout: float = _opt(30.0, lo=0, hi=3600)

    @property
    def backend(self) -> Literal["postgres", "sqlite"]:
        return "sqlite" if self.url.startswith("sqlite:") else "postgres"

    @property
    def sqlite_path(self) -> Path | None:
        """The database file (``sqlite:///rel`` is relative, ``sqlite:////abs`` absolute)."""
        return Path(self.url[len("sqlite:///") :]) if self.backend == "sqlite" else None


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``[auth]``: how client JWTs are verified; with no key source, dev keys in the data dir."""

    public_key_file: Path | None = None
    jwks_url: str | None = _opt(None, check=_url("https", "http"))
    jwks_cache_seconds: float = _opt(300.0, lo=1, hi=86_400)
    jwks_min_refresh_seconds: float = _opt(10.0, lo=0, hi=86_400)
    jwks_timeout: float = _opt(5.0, lo=0.05, hi=120)
    issuer: str | None = None
    audience: str | None = None
    leeway: float = _opt(30.0, lo=0, hi=3600)
    dev_private_key_file: Path | None = None
    dev_kid: str | None = None
    close_on_expiry: bool = True

    @property
    def uses_dev_keys(self) -> bool:
        return self.public_key_file is None and self.jwks_url is None


@dataclass(frozen=True, slots=True)
class ProfilesConfig:
    """``[profiles]``: where `{id, displayName}` per email + intent come from."""

    provider: Literal["local", "remote"] = "local"
    url: str | None = _opt(None, check=_url("https", "http"))
    service_name: str = "chat-service"
    audience: str = "profile-service"
    service_private_key_file: Path | None = None
    kid: str | None = None
    service_token_ttl: int = _opt(60, lo=5, hi=120)
    timeout: float = _opt(2.0, lo=0.05, hi=120)
    max_connections: int = _opt(100, lo=1, hi=100_000)
    cache_ttl: float = _opt(300.0, lo=0, hi=86_400)
    cache_not_found_ttl: float = _opt(30.0, lo=0, hi=86_400)
    cache_size: int = _opt(10_000, lo=1, hi=10_000_000)
    stale_if_error: bool = True
    breaker_failures: int = _opt(5, lo=1, hi=1000)
    breaker_failure_rate: float = _opt(0.5, lo=0.01, hi=1)
    breaker_window_seconds: float = _opt(30.0, lo=0.1, hi=3600)
    breaker_reset_seconds: float = _opt(30.0, lo=0.1, hi=3600)


@dataclass(frozen=True, slots=True)
class RabbitMQConfig:
    """``[rabbitmq]``: present (or ``CHATD_RABBITMQ_URL`` set) means several instances."""

    url: str = _opt(MISSING, check=_url("amqp", "amqps"))
    exchange: str = "chatd.events"
    prefetch: int = _opt(256, lo=1, hi=65_535)
    heartbeat_seconds: int = _opt(30, lo=0, hi=3600)
    reconnect_initial_seconds: float = _opt(0.5, lo=0.01, hi=600)
    reconnect_max_seconds: float = _opt(30.0, lo=0.01, hi=3600)
    queue_expires_seconds: float = _opt(300.0, lo=1, hi=7 * 86_400)
    confirm_timeout_seconds: float = _opt(10.0, lo=0.1, hi=3600)
    bring_up_stall_seconds: float = _opt(10.0, lo=0.1, hi=3600)
    unbind_after_seconds: float = _opt(30.0, lo=0, hi=86_400)
    dedupe_size: int = _opt(65_536, lo=1, hi=10_000_000)


def _key_prefix(value: str) -> str | None:
    if len(value) > 64 or not value.isprintable() or " " in value:
        return f"expected at most 64 printable characters without spaces, got {value!r}"
    return None


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """``[redis]``: the optional Redis tier shared by every instance (profiles, rate limits).

    Never a single point of failure: when Redis is down or slow, each feature falls back to
    what one instance knows (chatd/redis_tier)."""

    url: str = _opt(MISSING, check=_url("redis", "rediss", "unix"))
    key_prefix: str = _opt("chatd:", check=_key_prefix)
    pool_size: int = _opt(8, lo=1, hi=1000)
    timeout: float = _opt(0.25, lo=0.01, hi=60)
    retry_initial_seconds: float = _opt(0.5, lo=0.01, hi=600)
    retry_max_seconds: float = _opt(10.0, lo=0.01, hi=3600)
    rate_lease_block: int = _opt(10, lo=1, hi=1_000_000)
    rate_lease_seconds: float = _opt(10.0, lo=0.01, hi=3600)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """``[limits]``: message rules, rate limits and STOMP session limits."""

    max_content_length: int = _opt(rules.DEFAULT_MAX_CONTENT_LENGTH, lo=1, hi=1_000_000)
    allow_control_chars: bool = rules.DEFAULT_ALLOW_CONTROL_CHARS
    send_burst: int = _opt(rules.DEFAULT_SEND_BURST, lo=1, hi=1_000_000)
    sends_per_second: float = _opt(rules.DEFAULT_SENDS_PER_SECOND, lo=0.001, hi=1_000_000)
    identical_content: int = _opt(rules.DEFAULT_IDENTICAL_CONTENT, lo=1, hi=1_000_000)
    identical_window_seconds: float = _opt(rules.DEFAULT_IDENTICAL_WINDOW_SECONDS, lo=0, hi=86_400)
    rate_limit_users: int = _opt(rules.DEFAULT_RATE_LIMIT_USERS, lo=1, hi=100_000_000)
    history_default: int = _opt(rules.DEFAULT_HISTORY_LIMIT, lo=1, hi=10_000)
    history_max: int = _opt(rules.DEFAULT_HISTORY_MAX, lo=1, hi=10_000)
    stomp_max_frame_size: int = _opt(65_536, lo=1024, hi=64 * 1024 * 1024)
    stomp_max_headers: int = _opt(64, lo=1, hi=10_000)
    stomp_max_subscriptions: int = _opt(64, lo=1, hi=100_000)
    stomp_max_pending_frames: int = _opt(1000, lo=1, hi=1_000_000)
    max_queued_sends: int = _opt(256, lo=1, hi=1_000_000)
    max_send_wait_ms: int = _opt(100, lo=1, hi=3_600_000)
    max_delivery_backlog: int = _opt(3000, lo=1, hi=100_000_000)
    max_public_keys: int = _opt(jwk.DEFAULT_MAX_PUBLIC_KEYS, lo=1, hi=100_000)
    max_batch: int = _opt(rules.DEFAULT_MAX_BATCH, lo=1, hi=10_000)


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    """``[outbox]``: the publisher's claim batch, lease, polling fallback and retry backoff,
    and how long sent rows are kept."""

    batch_size: int = _opt(1000, lo=1, hi=10_000)
    lease_seconds: float = _opt(30.0, lo=1, hi=3600)
    poll_interval: float = _opt(1.0, lo=0.01, hi=3600)
    max_attempts: int = _opt(10, lo=1, hi=1000)
    backoff_base: float = _opt(0.5, lo=0.001, hi=3600)
    backoff_cap: float = _opt(60.0, lo=0.001, hi=86_400)
    retention_hours: float = _opt(24.0, lo=0, hi=87_600)
    direct_delivery: bool = True


@dataclass(frozen=True, slots=True)
class PresenceConfig:
    """``[presence]``: who of a user's peers is online, and how fast that changes."""

    enabled: bool = True
    grace_seconds: float = _opt(presence.DEFAULT_GRACE_SECONDS, lo=0, hi=3600)
    ttl_seconds: float = _opt(presence.DEFAULT_TTL_SECONDS, lo=1, hi=86_400)
    max_peers: int = _opt(presence.DEFAULT_MAX_PEERS, lo=1, hi=1_000_000)


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """``[logging]``: format, level, and which personal data may appear in log lines."""

    format: Literal["json", "text", "auto"] = "auto"
    level: LogLevel = "INFO"
    include_user: bool = False
    include_content: bool = False
    access_log: bool = True


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """``[tracing]``: OpenTelemetry spans over OTLP/HTTP; off unless enabled (see `enabled`).

    Off unless ``enabled = true``, or, when `enabled` is not set at all, the standard
    environment names an OTLP endpoint; ``OTEL_SDK_DISABLED=true`` turns it off whatever else
    says (`_tracing_from_otel_env` has the rule, docs/operations.md explains it). The loader
    fills `endpoint` and `service_name` from the environment when they are not set here, so a
    loaded config with tracing on always names where spans go.
    """

    enabled: bool = False
    endpoint: str | None = _opt(None, check=_url("http", "https"))
    service_name: str | None = None
    sample_ratio: float | None = _opt(None, lo=0, hi=1)


SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "database": DatabaseConfig,
    "auth": AuthConfig,
    "profiles": ProfilesConfig,
    "rabbitmq": RabbitMQConfig,
    "redis": RedisConfig,
    "limits": LimitsConfig,
    "outbox": OutboxConfig,
    "presence": PresenceConfig,
    "logging": LoggingConfig,
    "tracing": TracingConfig,
}
OPTIONAL_SECTIONS = frozenset({"rabbitmq", "redis"})


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration. `rabbitmq` is None for a single instance, `redis` None
    without the shared Redis tier."""

    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    profiles: ProfilesConfig = field(default_factory=ProfilesConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    presence: PresenceConfig = field(default_factory=PresenceConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    rabbitmq: RabbitMQConfig | None = None
    redis: RedisConfig | None = None
    source: Path | None = None  # the file read, if any

    def __post_init__(self) -> None:
        # Done here, not in the loader, so `Config()` in tests is complete as well.
        url = self.database.url.replace("{data_dir}", self.server.data_dir.as_posix())
        object.__setattr__(self, "database", replace(self.database, url=url))


# Named variables (docs/architecture.md, Operator interface); any other key is
# CHATD_<SECTION>__<KEY>.
ENV_ALIASES: dict[str, str] = {
    "CHATD_BIND": "server.bind",
    "CHATD_DATA_DIR": "server.data_dir",
    "CHATD_DATABASE_URL": "database.url",
    "CHATD_RABBITMQ_URL": "rabbitmq.url",
    "CHATD_REDIS_URL": "redis.url",
    "CHATD_JWT_PUBLIC_KEY": "auth.public_key_file",
    "CHATD_JWKS_URL": "auth.jwks_url",
    "CHATD_PROFILE_SERVICE_URL": "profiles.url",
    "CHATD_SERVICE_PRIVATE_KEY": "profiles.service_private_key_file",
    "CHATD_LOG_FORMAT": "logging.format",
    "CHATD_LOG_LEVEL": "logging.level",
}


@dataclass(frozen=True, slots=True)
class _Origin:
    label: str  # shown in errors: a file path, "environment variable X", "command line (...)"
    base_dir: Path | None  # relative paths resolve here; None leaves them relative
    text: bool  # the value is a string to parse (env, CLI) rather than a typed TOML value


@dataclass(frozen=True, slots=True)
class _Raw:
    value: Any
    origin: _Origin


class _Collected:
    """Raw values by section and key, the later source overwriting the earlier."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, _Raw]] = {name: {} for name in SECTIONS}
        self.enabled: dict[str, _Origin] = {}  # optional sections switched on, and by what

    def enable(self, section: str, origin: _Origin) -> None:
        """Note that `section` was named (an empty ``[rabbitmq]`` still switches it on)."""
        if section not in SECTIONS:
            hint = _hint(section, SECTIONS)
            raise ConfigError(f"{origin.label}: unknown section [{section}]{hint}")
        self.enabled.setdefault(section, origin)

    def put(self, section: str, key: str, value: Any, origin: _Origin) -> None:
        self.enable(section, origin)
        names = [f.name for f in fields(SECTIONS[section])]
        if key not in names:
            raise ConfigError(f"{origin.label}: {section}.{key}: unknown key{_hint(key, names)}")
        self.values[section][key] = _Raw(value, origin)


def _hint(word: str, known: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    overrides: Mapping[str, str] | None = None,
) -> Config:
    """Build the configuration from defaults, a TOML file, `env` and `overrides`; pure.

    `path` None means ``env["CHATD_CONFIG"]`` if set, else no file (the embedded default).
    `overrides` maps ``"section.key"`` to a string, as typed on the command line (highest
    precedence). Raises `ConfigError` naming the key and the file or variable at fault.
    """
    env = env or {}
    collected = _Collected()
    if path is None and env.get("CHATD_CONFIG"):
        path = Path(env["CHATD_CONFIG"])
    if path is not None:
        _read_file(path, collected)
    _read_env(env, collected)
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        collected.put(section, key, value, _Origin(f"command line ({dotted})", None, True))

    built: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        if name in OPTIONAL_SECTIONS and name not in collected.enabled:
            continue
        built[name] = _build_section(name, cls, collected)
    built["tracing"] = _tracing_from_otel_env(built["tracing"], collected, env)
    config = Config(**built, source=path)
    _cross_check(config, collected)
    return _fit_max_batch(config, collected)


def _read_file(path: Path, collected: _Collected) -> None:
    origin = _Origin(str(path), path.parent, False)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section}: top-level keys are not allowed; use a [section]")
        collected.enable(section, origin)
        for key, value in table.items():
            collected.put(section, key, value, origin)


def _read_env(env: Mapping[str, str], collected: _Collected) -> None:
    for name in sorted(env):
        if not name.startswith("CHATD_") or "__" not in name:
            continue  # other CHATD_* names (e.g. of test tooling) are not ours to judge
        section, _, key = name[len("CHATD_") :].partition("__")
        origin = _Origin(f"environment variable {name}", None, True)
        collected.put(section.lower(), key.lower(), env[name], origin)
    for name, dotted in ENV_ALIASES.items():
        value = env.get(name, "")
        if not value.strip():
            continue  # unset and empty mean the same: "not configured here"
        origin = _Origin(f"environment variable {name}", None, True)
        section, _, key = dotted.partition(".")
        collected.put(section, key, value, origin)
        if name == "CHATD_PROFILE_SERVICE_URL":
            collected.put("profiles", "provider", "remote", origin)


def _build_section(name: str, cls: type, collected: _Collected) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for spec in fields(cls):
        dotted = f"{name}.{spec.name}"
        raw = collected.values[name].get(spec.name)
        if raw is None:
            if spec.default is MISSING:
                where = collected.enabled[name].label
                raise ConfigError(f"{where}: {dotted} is required when [{name}] is enabled")
            continue
        try:
            kwargs[spec.name] = _validate(_coerce(hints[spec.name], raw), spec.metadata, raw)
        except ValueError as exc:
            raise ConfigError(f"{raw.origin.label}: {dotted}: {exc}") from None
    return cls(**kwargs)


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _coerce(tp: Any, raw: _Raw) -> Any:
    """Turn a TOML value (type-checked) or an env/CLI string (parsed) into the field's type."""
    value, text = raw.value, raw.origin.text
    if typing.get_origin(tp) in (Union, types.UnionType):
        (inner,) = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        if text and not value.strip():
            return None
        return _coerce(inner, raw)
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, str):
            for choice in choices:
                if choice.lower() == value.strip().lower():
                    return choice
        raise ValueError(f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
    if tp is bool:
        if text and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if not text and isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if text and value.strip().lstrip("-").isdigit():
            return int(value)
        if not text and isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"expected an integer, got {value!r}")
    if tp is float:
        number: float | None = None
        if text:
            with contextlib.suppress(ValueError):
                number = float(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        if number is None or not math.isfinite(number):
            raise ValueError(f"expected a number, got {value!r}")
        return number
    if tp is str or tp is Path:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        value = value.strip() if text else value
        if not value:
            raise ValueError("must not be empty")
        if tp is str:
            return value
        result = Path(value)
        base = raw.origin.base_dir
        return base / result if base is not None and not result.is_absolute() else result
    raise TypeError(f"unsupported config field type {tp!r}")  # a schema bug, not user input


def _validate(value: Any, meta: Mapping[str, Any], raw: _Raw) -> Any:
    if value is None:
        return None
    lo, hi, check = meta.get("lo"), meta.get("hi"), meta.get("check")
    if lo is not None and value < lo:
        raise ValueError(f"must be at least {lo:g}, got {raw.value!r}")
    if hi is not None and value > hi:
        raise ValueError(f"must be at most {hi:g}, got {raw.value!r}")
    if check is not None and (problem := check(value)) is not None:
        raise ValueError(problem)
    return value


#: Where OTLP/HTTP trace exports go when neither chatd nor the environment says.
DEFAULT_OTLP_TRACES_ENDPOINT = "http://localhost:4318/v1/traces"
DEFAULT_SERVICE_NAME = "chatd"
_OTLP_PROTOCOL = "http/protobuf"


def _tracing_from_otel_env(
    tracing: TracingConfig, collected: _Collected, env: Mapping[str, str]
) -> TracingConfig:
    """Apply the standard ``OTEL_*`` variables chatd reads itself (the SDK reads the others:
    ``OTEL_TRACES_SAMPLER``/``_ARG``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_EXPORTER_OTLP_HEADERS``,
    ``_TIMEOUT``, ``_COMPRESSION``, ``OTEL_BSP_*``).

    On: ``OTEL_SDK_DISABLED=true`` → off; else `enabled` when set anywhere (file, environment
    or command line); else on when an OTLP endpoint variable is set or
    ``OTEL_TRACES_EXPORTER=otlp``, and off for ``OTEL_TRACES_EXPORTER=none``. Once on, a
    traces exporter other than otlp or a protocol other than http/protobuf is a ConfigError
    (that is all chatd ships), as is an endpoint that is not an http(s) URL.
    """

    def value(name: str) -> str:
        return env.get(name, "").strip()

    def fail(name: str, problem: str) -> typing.NoReturn:
        raise ConfigError(f"environment variable {name}: {problem}")

    exporter = value("OTEL_TRACES_EXPORTER").lower()
    if value("OTEL_SDK_DISABLED").lower() == "true":
        enabled = False
    elif "enabled" in collected.values["tracing"]:
        enabled = tracing.enabled
    else:
        endpoint_set = any(
            value(n) for n in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
        )
        enabled = exporter != "none" and (endpoint_set or exporter == "otlp")
    if not enabled:
        return replace(tracing, enabled=False)
    if exporter not in ("", "otlp", "none"):  # none: only when tracing.enabled overrules it
        fail("OTEL_TRACES_EXPORTER", f"chatd exports traces over OTLP only, got {exporter!r}")
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        if value(name) and value(name).lower() != _OTLP_PROTOCOL:
            fail(name, f"chatd exports OTLP over {_OTLP_PROTOCOL} only, got {value(name)!r}")
            break
    endpoint = tracing.endpoint
    if endpoint is None:
        if value("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            name, endpoint = (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                value("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            )
        elif value("OTEL_EXPORTER_OTLP_ENDPOINT"):
            # the base URL: the spec appends the signal's path for OTLP/HTTP
            name = "OTEL_EXPORTER_OTLP_ENDPOINT"
            endpoint = value(name).rstrip("/") + "/v1/traces"
        else:
            name, endpoint = "", DEFAULT_OTLP_TRACES_ENDPOINT
        if name and (problem := _url("http", "https")(endpoint)) is not None:
            fail(name, problem)
    service = tracing.service_name or value("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
    return replace(tracing, enabled=True, endpoint=endpoint, service_name=service)


#: (section, lower, upper): keys of one section whose values must be in order (the section
#: may be unset: then there is nothing to check).
_ORDERED_KEYS = (
    ("limits", "history_default", "history_max"),
    ("outbox", "backoff_base", "backoff_cap"),
    ("rabbitmq", "reconnect_initial_seconds", "reconnect_max_seconds"),
    ("redis", "retry_initial_seconds", "retry_max_seconds"),
)


def _cross_check(config: Config, collected: _Collected) -> None:
    """Rules between keys; the error blames the key that was set last."""

    def fail(dotted: str, problem: str) -> typing.NoReturn:
        section, _, key = dotted.partition(".")
        raw = collected.values[section].get(key)
        label = raw.origin.label if raw else "defaults"
        raise ConfigError(f"{label}: {dotted}: {problem}")

    auth, profiles, limits = config.auth, config.profiles, config.limits
    if auth.public_key_file is not None and auth.jwks_url is not None:
        fail("auth.jwks_url", "set either auth.public_key_file or auth.jwks_url, not both")
    if profiles.provider == "remote":
        if profiles.url is None:
            fail("profiles.provider", 'profiles.url is required when provider = "remote"')
        if profiles.service_private_key_file is None:
            fail(
                "profiles.provider",
                "profiles.service_private_key_file (or CHATD_SERVICE_PRIVATE_KEY) is required "
                'when provider = "remote"',
            )
    for name, lower, upper in _ORDERED_KEYS:
        section = getattr(config, name)
        if section is not None and getattr(section, lower) > getattr(section, upper):
            fail(f"{name}.{lower}", f"must not exceed {name}.{upper}")
    if config.presence.max_peers * 2 > limits.stomp_max_pending_frames:
        # a presence snapshot is one MESSAGE per peer, written at once: it must leave room
        # in the session's send queue, or subscribing would close it as a slow consumer
        fail(
            "presence.max_peers",
            "must be at most half of limits.stomp_max_pending_frames "
            f"({limits.stomp_max_pending_frames}): a snapshot is one frame per peer",
        )


def _fit_max_batch(config: Config, collected: _Collected) -> Config:
    """A batch is refused whole unless each of its messages would be accepted, so a batch
    larger than the rate limit's burst, the send queue or the delivery backlog (at
    `ROWS_PER_MESSAGE` rows a message) allows could never pass. An explicit
    ``limits.max_batch`` that large is an error; the default shrinks to fit, so a config
    written before batch sends existed (a small ``send_burst``) keeps working."""
    limits = config.limits
    bounds = (
        ("send_burst", limits.send_burst),
        ("max_queued_sends", limits.max_queued_sends),
        ("max_delivery_backlog", (limits.max_delivery_backlog - 1) // ROWS_PER_MESSAGE + 1),
    )
    key, room = min(bounds, key=lambda bound: bound[1])
    if limits.max_batch <= room:
        return config
    raw = collected.values["limits"].get("max_batch")
    if raw is None:
        return replace(config, limits=replace(limits, max_batch=room))
    raise ConfigError(
        f"{raw.origin.label}: limits.max_batch: {limits.max_batch} is more than "
        f"limits.{key} allows ({room}): a batch that big could never be "
        "accepted; lower it or raise the other"
    )


def redact_url(url: str) -> str:
    """`url` with any password replaced by ``***``, for logs and check-config output."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
