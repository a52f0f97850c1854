"""Config loading: defaults, file, env, CLI overrides, and errors that name key and origin."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from chatd import config as cfg
from chatd.config import Config, ConfigError, RedisConfig, load_config, parse_bind

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "conf" / "chatd.example.toml"
DEV = ROOT / "conf" / "dev.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "chatd.toml"
    path.write_text(text)
    return path


def test_defaults_match_the_design() -> None:
    config = load_config(None, {})
    assert config == Config()
    assert config.server.bind == "127.0.0.1:8080"
    assert config.server.data_dir == Path("chatd-data")
    assert config.server.demo_page is True
    assert config.database.url == "sqlite:///chatd-data/chatd.sqlite3"
    assert config.database.backend == "sqlite"
    assert config.database.sqlite_path == Path("chatd-data/chatd.sqlite3")
    assert config.auth.uses_dev_keys
    assert config.profiles.provider == "local"
    assert config.rabbitmq is None
    limits = config.limits
    assert (limits.max_content_length, limits.send_burst, limits.sends_per_second) == (
        4000,
        200,
        20,
    )
    assert (limits.identical_content, limits.identical_window_seconds) == (20, 10)
    assert limits.history_max == 200
    assert config.logging.format == "auto"


def test_sections_are_frozen() -> None:
    config = load_config(None, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.bind = "x:1"  # type: ignore[misc]


def test_file_values_and_relative_paths(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [server]
        bind = "0.0.0.0:9000"
        data_dir = "state"
        stomp_tcp_bind = "[::1]:61613"
        [auth]
        public_key_file = "keys/pub.pem"
        issuer = "https://id.example.com/"
        [limits]
        send_burst = 5
        sends_per_second = 1
        [logging]
        level = "debug"
        """,
    )
    config = load_config(path, {})
    assert config.source == path
    assert config.server.bind_address == ("0.0.0.0", 9000)
    assert config.server.stomp_tcp_address == ("::1", 61613)
    assert config.server.data_dir == tmp_path / "state"
    assert config.database.url == f"sqlite:///{(tmp_path / 'state').as_posix()}/chatd.sqlite3"
    assert config.database.sqlite_path == tmp_path / "state" / "chatd.sqlite3"
    assert config.auth.public_key_file == tmp_path / "keys" / "pub.pem"
    assert not config.auth.uses_dev_keys
    assert config.limits.sends_per_second == 1.0
    assert isinstance(config.limits.sends_per_second, float)
    assert config.logging.level == "DEBUG"


def test_precedence_defaults_file_env_cli(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nbind = "127.0.0.1:1111"\n[limits]\nsend_burst = 7\n')
    env = {"CHATD_BIND": "127.0.0.1:2222", "CHATD_LIMITS__SEND_BURST": "9"}
    assert load_config(path, {}).server.bind == "127.0.0.1:1111"
    assert load_config(path, env).server.bind == "127.0.0.1:2222"
    assert load_config(path, env).limits.send_burst == 9
    config = load_config(path, env, overrides={"server.bind": "127.0.0.1:3333"})
    assert config.server.bind == "127.0.0.1:3333"


def test_config_path_from_env(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\ndemo_page = false\n")
    assert load_config(None, {"CHATD_CONFIG": str(path)}).server.demo_page is False


def test_named_environment_variables(tmp_path: Path) -> None:
    key = tmp_path / "svc.pem"
    env = {
        "CHATD_DATA_DIR": "/var/lib/chatd",
        "CHATD_DATABASE_URL": "postgresql://chat:secret@db:5432/chat",
        "CHATD_RABBITMQ_URL": "amqp://guest:guest@mq:5672/%2F",
        "CHATD_JWT_PUBLIC_KEY": "pub.pem",
        "CHATD_PROFILE_SERVICE_URL": "https://profiles.example.com",
        "CHATD_SERVICE_PRIVATE_KEY": str(key),
        "CHATD_LOG_FORMAT": "json",
        "CHATD_TEST_PG_ADMIN_URL": "not ours: ignored",
    }
    config = load_config(None, env)
    assert config.server.data_dir == Path("/var/lib/chatd")
    assert config.database.backend == "postgres"
    assert config.database.sqlite_path is None
    assert config.rabbitmq is not None
    assert config.rabbitmq.url.startswith("amqp://")
    assert config.rabbitmq.exchange == "chatd.events"
    assert config.auth.public_key_file == Path("pub.pem")  # env: relative to the cwd
    assert config.profiles.provider == "remote"
    assert config.profiles.url == "https://profiles.example.com"
    assert config.profiles.service_private_key_file == key
    assert config.logging.format == "json"


def test_data_dir_override_moves_the_default_database() -> None:
    config = load_config(None, {}, overrides={"server.data_dir": "/srv/chat"})
    assert config.database.url == "sqlite:////srv/chat/chatd.sqlite3"
    assert config.database.sqlite_path == Path("/srv/chat/chatd.sqlite3")


def test_env_values_are_parsed_to_the_field_type() -> None:
    env = {
        "CHATD_SERVER__DEMO_PAGE": "off",
        "CHATD_LIMITS__IDENTICAL_WINDOW_SECONDS": "2.5",
        "CHATD_SERVER__STOMP_TCP_BIND": "127.0.0.1:61613",
        "CHATD_AUTH__AUDIENCE": "chat",
    }
    config = load_config(None, env)
    assert config.server.demo_page is False
    assert config.limits.identical_window_seconds == 2.5
    assert config.server.stomp_tcp_bind == "127.0.0.1:61613"
    assert config.auth.audience == "chat"


def test_empty_rabbitmq_section_needs_a_url(tmp_path: Path) -> None:
    path = write(tmp_path, "[rabbitmq]\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: rabbitmq.url is required"):
        load_config(path, {})
    path.write_text('[rabbitmq]\nurl = "amqp://mq"\nexchange = "x"\n')
    rabbitmq = load_config(path, {}).rabbitmq
    assert rabbitmq is not None
    assert rabbitmq.exchange == "x"


FILE_ERRORS = [
    ("[sever]\nbind = '1:1'\n", r"unknown section \[sever\] \(did you mean 'server'\?\)"),
    ("[server]\nbnd = '1:1'\n", r"server\.bnd: unknown key \(did you mean 'bind'\?\)"),
    ("[server]\nbind = 'nope'\n", r"server\.bind: expected HOST:PORT"),
    ("[server]\nbind = '127.0.0.1:70000'\n", r"server\.bind: port must be between"),
    ("[server]\nbind = 8080\n", r"server\.bind: expected a string"),
    ("[server]\ndemo_page = 'yes'\n", r"server\.demo_page: expected true or false"),
    ("[limits]\nsend_burst = 1.5\n", r"limits\.send_burst: expected an integer"),
    ("[limits]\nsend_burst = true\n", r"limits\.send_burst: expected an integer"),
    ("[limits]\nsend_burst = 0\n", r"limits\.send_burst: must be at least 1"),
    ("[limits]\nsends_per_second = 'fast'\n", r"limits\.sends_per_second: expected a number"),
    ("[limits]\nhistory_default = 300\n", r"limits\.history_default: must not exceed"),
    (
        "[outbox]\nbackoff_base = 1000\n",
        r"outbox\.backoff_base: must not exceed outbox\.backoff_cap",
    ),
    (
        "[rabbitmq]\nurl = 'amqp://mq'\nreconnect_initial_seconds = 100\n",
        r"rabbitmq\.reconnect_initial_seconds: must not exceed rabbitmq\.reconnect_max_seconds",
    ),
    (
        "[redis]\nurl = 'redis://r'\nretry_initial_seconds = 100\n",
        r"redis\.retry_initial_seconds: must not exceed redis\.retry_max_seconds",
    ),
    ("[presence]\nmax_peers = 501\n", r"presence\.max_peers: must be at most half of limits"),
    ("[presence]\ngrace_seconds = -1\n", r"presence\.grace_seconds: must be at least 0"),
    ("[logging]\nformat = 'xml'\n", r"logging\.format: expected one of 'json', 'text'"),
    ("[database]\nurl = 'mysql://x/y'\n", r"database\.url: expected postgresql://"),
    ("[auth]\njwks_url = 'ftp://x'\n", r"auth\.jwks_url: expected a https:// or http:// URL"),
    (
        "[auth]\njwks_url = 'https://x/jwks'\npublic_key_file = 'p.pem'\n",
        r"auth\.jwks_url: set either",
    ),
    ("[profiles]\nprovider = 'remote'\n", r"profiles\.provider: profiles\.url is required"),
    ("[profiles]\nservice_token_ttl = 600\n", r"profiles\.service_token_ttl: must be at most 120"),
    ("bind = '1:1'\n", r"bind: top-level keys are not allowed"),
    ("[server\n", r"invalid TOML"),
]


@pytest.mark.parametrize(("text", "pattern"), FILE_ERRORS)
def test_file_errors_name_the_file_and_the_key(tmp_path: Path, text: str, pattern: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {pattern}"):
        load_config(path, {})


ENV_ERRORS = [
    ({"CHATD_BIND": "localhost"}, "CHATD_BIND", r"server\.bind: expected HOST:PORT"),
    (
        {"CHATD_LIMITS__SEND_BURST": "lots"},
        "CHATD_LIMITS__SEND_BURST",
        r"limits\.send_burst: expected an integer",
    ),
    ({"CHATD_NOPE__X": "1"}, "CHATD_NOPE__X", r"unknown section \[nope\]"),
    ({"CHATD_SERVER__NOPE": "1"}, "CHATD_SERVER__NOPE", r"server\.nope: unknown key"),
    ({"CHATD_LOG_FORMAT": "xml"}, "CHATD_LOG_FORMAT", r"logging\.format: expected one of"),
    ({"CHATD_RABBITMQ_URL": "http://mq"}, "CHATD_RABBITMQ_URL", r"rabbitmq\.url: expected"),
    (
        {"CHATD_PROFILE_SERVICE_URL": "https://p.example.com"},
        "CHATD_PROFILE_SERVICE_URL",
        r"profiles\.provider: profiles\.service_private_key_file .* is required",
    ),
]


@pytest.mark.parametrize(("env", "name", "pattern"), ENV_ERRORS)
def test_env_errors_name_the_variable(env: dict[str, str], name: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=rf"^environment variable {name}: {pattern}"):
        load_config(None, env)


def test_cli_override_errors_name_the_flag_key() -> None:
    with pytest.raises(ConfigError, match=r"^command line \(server\.bind\): server\.bind: "):
        load_config(None, {}, overrides={"server.bind": "bad"})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"^/nonexistent/chatd\.toml: config file not found"):
        load_config(Path("/nonexistent/chatd.toml"), {})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("localhost:8080", ("localhost", 8080)),
        ("[::]:80", ("::", 80)),
    ],
)
def test_parse_bind(value: str, expected: tuple[str, int]) -> None:
    assert parse_bind(value) == expected


@pytest.mark.parametrize("value", ["8080", ":8080", "host:", "::1:80", "h:-1", "h:x"])
def test_parse_bind_refuses(value: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|port"):
        parse_bind(value)


def test_dev_toml_is_the_embedded_default() -> None:
    assert dataclasses.replace(load_config(DEV, {}), source=None) == load_config(None, {})


def _example_entries() -> dict[str, dict[str, str]]:
    """``# key = value`` lines of the example, by (possibly commented) section."""
    entries: dict[str, dict[str, str]] = {}
    section = ""
    for line in EXAMPLE.read_text().splitlines():
        if match := re.fullmatch(r"#?\s*\[(\w+)\]\s*", line):
            section = match.group(1)
            entries.setdefault(section, {})
        elif match := re.fullmatch(r"#\s*(\w+) = (.+)", line):
            entries[section][match.group(1)] = match.group(2)
    return entries


def test_example_documents_every_key_with_its_default() -> None:
    entries = _example_entries()
    assert set(entries) == set(cfg.SECTIONS)
    for name, cls in cfg.SECTIONS.items():
        for spec in dataclasses.fields(cls):
            assert spec.name in entries[name], f"{name}.{spec.name} is not documented"
            if spec.default in (None, dataclasses.MISSING):
                continue  # optional keys show an example value instead
            shown = tomllib.loads(f"v = {entries[name][spec.name]}")["v"]
            default = spec.default
            if isinstance(default, Path):
                default = str(default)
            assert shown == default, f"{name}.{spec.name}: example shows {shown!r}"
        assert set(entries[name]) <= {f.name for f in dataclasses.fields(cls)}


def test_example_loads() -> None:
    assert dataclasses.replace(load_config(EXAMPLE, {}), source=None) == load_config(None, {})


def test_max_batch_fits_the_limits_a_batch_is_charged_against(tmp_path: Path) -> None:
    assert load_config(None, {}).limits.max_batch == 100
    # the default shrinks to what the smallest bound allows (older configs keep working)
    assert load_config(None, {"CHATD_LIMITS__SEND_BURST": "9"}).limits.max_batch == 9
    assert load_config(None, {"CHATD_LIMITS__MAX_QUEUED_SENDS": "40"}).limits.max_batch == 40
    assert (
        load_config(None, {"CHATD_LIMITS__MAX_DELIVERY_BACKLOG": "31"}).limits.max_batch == 11
    )  # 3 * 10 rows before the 11th < 31
    assert (
        load_config(
            None, {"CHATD_LIMITS__MAX_BATCH": "200", "CHATD_LIMITS__SEND_BURST": "300"}
        ).limits.max_batch
        == 200
    )
    # an explicit one that could never be accepted is an error naming both keys
    path = write(tmp_path, "[limits]\nmax_batch = 50\nmax_queued_sends = 20\n")
    with pytest.raises(
        ConfigError,
        match=r"chatd\.toml: limits\.max_batch: 50 is more than "
        r"limits\.max_queued_sends allows \(20\)",
    ):
        load_config(path, {})


def test_redis_is_off_by_default_and_on_with_its_url(tmp_path: Path) -> None:
    assert load_config(None, {}).redis is None
    config = load_config(None, {"CHATD_REDIS_URL": "redis://cache:6379/0"})
    assert config.redis is not None
    assert (config.redis.url, config.redis.key_prefix) == ("redis://cache:6379/0", "chatd:")
    path = write(tmp_path, '[redis]\nurl = "rediss://cache"\nkey_prefix = "eu1:chatd:"\n')
    assert load_config(path, {}).redis == RedisConfig(url="rediss://cache", key_prefix="eu1:chatd:")
    with pytest.raises(ConfigError, match=r"redis\.url: expected a redis://"):
        load_config(None, {"CHATD_REDIS_URL": "http://cache"})
    with pytest.raises(ConfigError, match=r"redis\.key_prefix: expected at most 64"):
        load_config(None, {"CHATD_REDIS_URL": "redis://c", "CHATD_REDIS__KEY_PREFIX": "a b"})
    with pytest.raises(ConfigError, match=r"redis\.url is required"):
        load_config(write(tmp_path, "[redis]\npool_size = 2\n"), {})
