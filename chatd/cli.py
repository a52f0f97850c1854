"""The `chatd` command: serve, migrate, check-config, keys, token.

Operator mistakes (a bad config, a missing key file) print one ``chatd: error: ...`` line on
stderr and exit 2, like argparse's own usage errors. Whatever else keeps `serve` or `migrate`
from starting is a `StartupError` (`chatd.startup`), reported once by `_fail`: one
``chatd: ...`` line, or one JSON event with JSON logs, and exit 2 or 1; its traceback only
with ``--debug`` (or ``logging.level = "DEBUG"``). A traceback without it means a bug. The
server and storage modules are imported inside their commands, so the light commands work
(and start fast) without the web stack or a database driver.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from chatd.config import Config, ConfigError, load_config, redact_url
from chatd.startup import EXIT_CONFIG, StartupError

EXIT_USAGE = EXIT_CONFIG
DEFAULT_TOKEN_TTL = 3600


class CommandError(Exception):
    """A failure to report on one line, then exit 2."""


def _load(args: argparse.Namespace, env: Mapping[str, str]) -> Config:
    overrides: dict[str, str] = {}
    if getattr(args, "bind", None):
        overrides["server.bind"] = args.bind
    if getattr(args, "data_dir", None):
        overrides["server.data_dir"] = args.data_dir
    if getattr(args, "debug", False):
        overrides["logging.level"] = "DEBUG"
    config_path = Path(args.config) if getattr(args, "config", None) else None
    return load_config(config_path, env, overrides=overrides)


def _note(message: str) -> None:
    print(f"chatd: {message}", file=sys.stderr)


def _fail(error: StartupError, config: Config) -> int:
    """Report why chatd cannot start, once; return the exit status.

    With JSON logs stderr carries only JSON objects, so the report is one ERROR event with
    the line as ``event`` and its parts as fields; otherwise the plain ``chatd: ...`` line.
    """
    import logging

    from chatd.observability.logs import choose_format

    debug = config.logging.level == "DEBUG"
    if choose_format(config.logging.format) == "json":
        logger = logging.getLogger("chatd")
        level = max(logging.ERROR, logger.getEffectiveLevel())  # never filtered out
        logger.log(level, str(error), extra=error.fields, exc_info=error if debug else None)
    else:
        if debug:
            import traceback

            traceback.print_exception(error, file=sys.stderr)
        _note(str(error))
    return error.exit_code


GIL_SWITCH_INTERVAL = 0.0005  # seconds; see `cmd_serve`
#: The garbage collector's thresholds (Python's default: 700, 10, 10); see `tune_gc`.
GC_THRESHOLDS = (20_000, 20, 10)


def cmd_serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Run the server until SIGINT/SIGTERM."""
    config = _load(args, env)
    from chatd.observability.logs import configure_logging

    # Before anything logs: with JSON logs, every line on stderr must be one JSON object.
    configure_logging(config.logging)
    if args.workers > 1:
        from chatd.workers import check_workers, run_workers

        try:
            check_workers(config, args.workers)
            _prepare_files(config)  # once, before the workers race to make the dev keys
        except StartupError as exc:
            return _fail(exc, config)
        return run_workers(args.argv, args.workers, env, config.server.shutdown_grace)
    try:
        _prepare_files(config)

        import trio

        from chatd.supervisor import serve

        # The event loop shares the GIL with the database worker threads. With the default
        # 5 ms switch interval a worker running Python keeps the loop waiting up to 5 ms at
        # every handoff (after each socket send, each thread result); 0.5 ms cut the
        # end-to-end p50 at 50 msg/s from ~160 ms to ~27 ms on the benchmark machine.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        tune_gc()
        trio.run(serve, config)
    except StartupError as exc:
        return _fail(exc, config)
    except KeyboardInterrupt:
        return 130
    return 0


def tune_gc() -> None:
    """Collect garbage far less often than Python's defaults, and never walk what start-up
    made (modules, classes, the config: `gc.freeze`).

    Why: under load most objects outlive a young collection (a send, a frame, a task lives
    across several turns of a busy loop), so the defaults promoted them by the thousand and
    then ran a full collection, which walks every live object of every session, about once
    a second. Measured in the soak (1 500 sessions an instance): 0.66 s a full collection,
    and the collector's pauses added up to most of the process's time. Each collection stops
    the event loop; the thresholds trade a little memory (cyclic garbage lives longer) for
    far fewer of them.

    The oldest generation is still collected, at every 11th middle collection (if what was
    promoted into it since the last one is a quarter of what it holds: Python's own rule),
    every 20-40 minutes at the soak's load. Garbage reaches it from code chatd does not own
    (werkzeug's URL matcher leaves a reference cycle per request; a fault's exceptions and
    dropped connections): with 100 (before) a soak instance kept ~4 000 requests' cycles
    per 7 minutes for a full collection that never came."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _prepare_files(config: Config) -> None:
    """Check the folders chatd writes to, then make the dev keys if used: they must exist
    before the port opens, so the first client can already be verified."""
    import logging

    from chatd.startup.local import check_data_dirs, key_error

    check_data_dirs(config)
    if config.auth.uses_dev_keys:
        from chatd.auth.keys import KeyFileError, ensure_dev_keys

        try:
            private_path, _, created = ensure_dev_keys(config.server.data_dir)
        except KeyFileError as exc:
            raise key_error(exc, config) from exc
        if created:
            logging.getLogger("chatd").info(
                "generated dev signing keys in %s (embedded default)", private_path.parent
            )


def cmd_migrate(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Apply pending schema migrations to the configured database and exit."""
    config = _load(args, env)
    import trio

    from chatd.observability.logs import configure_logging
    from chatd.startup.database import migrate_store, open_store
    from chatd.startup.local import check_data_dirs

    configure_logging(config.logging)  # the start-up wait logs its tries

    async def run() -> list[str]:
        store = await open_store(config)
        try:
            return await migrate_store(store, config.database)
        finally:
            await store.aclose()

    try:
        if config.database.sqlite_path is not None:
            check_data_dirs(config)
        applied = trio.run(run)
    except StartupError as exc:
        return _fail(exc, config)
    except KeyboardInterrupt:
        return 130
    target = redact_url(config.database.url)
    print(f"{target}: applied {len(applied)} migration(s)" + "".join(f"\n  {m}" for m in applied))
    return 0


def cmd_check_config(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Validate FILE (with the environment applied, as `serve` would) and summarize it."""
    env = {k: v for k, v in env.items() if k != "CHATD_CONFIG"}
    config = load_config(Path(args.file), env)
    print(f"{args.file}: OK")
    for line in describe(config):
        print(f"  {line}")
    if not args.connect:
        return 0
    import trio

    from chatd.startup import EXIT_UNAVAILABLE
    from chatd.startup.probe import probe_all

    print("connect:", flush=True)
    probes = trio.run(probe_all, config)
    for probe in probes:
        print(f"  {probe.line()}")
    return 0 if all(probe.ok for probe in probes) else EXIT_UNAVAILABLE


def cmd_keys(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Write a new RS256 key pair (private key mode 0600) into --out."""
    from chatd.auth.keys import write_key_pair

    private_path, public_path = write_key_pair(Path(args.out))
    print(f"private key: {private_path}\npublic key:  {public_path}")
    return 0


def cmd_token(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Print a JWT for EMAIL signed with the dev key, valid --ttl seconds."""
    from chatd.auth.keys import dev_signing_key, load_private_key
    from chatd.auth.tokens import mint_token
    from chatd.domain.errors import BadRequest
    from chatd.domain.rules import require_email

    config = _load(args, env)
    try:
        email = require_email(args.email, "EMAIL")
    except BadRequest as exc:
        raise CommandError(exc.message) from None
    if args.ttl <= 0:
        raise CommandError("--ttl must be a positive number of seconds")
    key_path, created = dev_signing_key(config)
    if created:
        _note(f"no dev keys yet: generated them in {key_path.parent}")
    auth = config.auth
    token = mint_token(
        load_private_key(key_path),
        email,
        args.ttl,
        issuer=auth.issuer,
        audience=auth.audience,
        kid=args.kid or auth.dev_kid,
    )
    _warn_if_unverifiable(config, token)
    print(token)
    return 0


def _warn_if_unverifiable(config: Config, token: str) -> None:
    """Say so when the server would refuse the token (dev key not matching the public key)."""
    if config.auth.jwks_url is not None:
        return
    from chatd.auth.tokens import verifier_from_config
    from chatd.domain.errors import Unauthenticated

    try:
        verifier_from_config(config).verify(token)
    except Unauthenticated as exc:
        _note(f"warning: the server would refuse this token ({exc.message})")


def describe(config: Config) -> list[str]:
    """A short summary of the effective configuration, without secrets."""
    server, auth, profiles, mq = config.server, config.auth, config.profiles, config.rabbitmq
    keys = (
        f"dev keys in {server.data_dir}"
        if auth.uses_dev_keys
        else str(auth.public_key_file or auth.jwks_url)
    )
    stomp_tcp = f", raw STOMP on {server.stomp_tcp_bind}" if server.stomp_tcp_bind else ""
    return [
        f"bind: {server.bind}{stomp_tcp}",
        f"data dir: {server.data_dir}",
        f"database: {redact_url(config.database.url)}",
        f"auth: RS256 with {keys}",
        f"profiles: {profiles.provider}" + (f" ({profiles.url})" if profiles.url else ""),
        "rabbitmq: "
        + (f"{redact_url(mq.url)} exchange {mq.exchange}" if mq else "off (single instance)"),
        f"logging: {config.logging.format}, {config.logging.level}",
        "tracing: "
        + (
            f"OTLP/HTTP to {redact_url(tr.endpoint or '')} as {tr.service_name}"
            if (tr := config.tracing).enabled
            else "off"
        ),
    ]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; each subcommand carries its handler as ``func``."""
    parser = argparse.ArgumentParser(prog="chatd", description="Real-time chat backend.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[..., int]) -> argparse.ArgumentParser:
        summary = (func.__doc__ or "").strip().splitlines()[0]
        command = sub.add_parser(name, help=summary, description=summary)
        command.set_defaults(func=func)
        return command

    config_help = "TOML config file (default: $CHATD_CONFIG, else the embedded default)"
    serve = add("serve", cmd_serve)
    serve.add_argument("--config", metavar="FILE", help=config_help)
    serve.add_argument("--bind", metavar="HOST:PORT", help="listen address (server.bind)")
    serve.add_argument("--data-dir", metavar="DIR", help="data directory (server.data_dir)")
    debug_help = "log at DEBUG level; a start-up error also prints its traceback"
    serve.add_argument("--debug", action="store_true", help=debug_help)
    serve.add_argument(
        "--workers",
        type=_positive,
        default=1,
        metavar="N",
        help="run N processes on the one port (SO_REUSEPORT; needs RabbitMQ "
        "and PostgreSQL, and SockJS off); default 1",
    )

    migrate = add("migrate", cmd_migrate)
    migrate.add_argument("--config", metavar="FILE", help=config_help)
    migrate.add_argument("--debug", action="store_true", help=debug_help)

    check = add("check-config", cmd_check_config)
    check.add_argument("file", metavar="FILE")
    check.add_argument(
        "--connect",
        action="store_true",
        help="also try each configured dependency (database, RabbitMQ, profile "
        "service, JWKS) once; exit 1 if one fails",
    )

    keys = add("keys", cmd_keys)
    keys.add_argument("--out", metavar="DIR", default=".", help="output directory (default: .)")

    token = add("token", cmd_token)
    token.add_argument("email", metavar="EMAIL")
    token.add_argument("--config", metavar="FILE", help=config_help)
    token.add_argument("--data-dir", metavar="DIR", help="data directory holding the dev keys")
    token.add_argument(
        "--ttl",
        type=float,
        default=DEFAULT_TOKEN_TTL,
        metavar="SECONDS",
        help=f"lifetime (default {DEFAULT_TOKEN_TTL})",
    )
    token.add_argument(
        "--kid",
        metavar="KID",
        help="key id put in the token header (default: auth.dev_kid, else none)",
    )
    return parser


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value!r}")
    return int(value)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Entry point of the `chatd` console script; returns the exit status."""
    from chatd.auth.keys import KeyFileError

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args, os.environ if env is None else env))
    except (ConfigError, KeyFileError, CommandError) as exc:
        print(f"chatd: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as exc:
        if exc.name in ("chatd.supervisor", "chatd.storage"):
            print(f"chatd: error: {args.command} is not available: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
