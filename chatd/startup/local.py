"""Start-up failures on this host: listeners, the folders chatd writes, key files."""

from __future__ import annotations

import errno
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from chatd.auth.keys import KeyFileError
from chatd.config import Config
from chatd.startup import EXIT_CONFIG, EXIT_UNAVAILABLE, StartupError, sentence
from chatd.startup.database import DATABASE_SETTING

_LISTEN_HINTS = {
    errno.EADDRINUSE: (EXIT_UNAVAILABLE, "is another chatd running? set {setting}"),
    errno.EADDRNOTAVAIL: (
        EXIT_CONFIG,
        "this host has no such address: set {setting} to one of its addresses, or 0.0.0.0 for all",
    ),
    errno.EACCES: (
        EXIT_CONFIG,
        "ports below 1024 need root or CAP_NET_BIND_SERVICE: set {setting} to a port above 1023",
    ),
}


def _first_os_error(exc: BaseException) -> OSError | None:
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _first_os_error(inner)) is not None:
                return found
    return None


@contextmanager
def listening(part: str, address: str, setting: str) -> Iterator[None]:
    """Around opening a listener on `address`: an `OSError` (bare or in a group) becomes
    ``cannot listen on ADDRESS: CAUSE (hint naming `setting`)``."""
    try:
        yield
    except BaseException as exc:
        os_error = _first_os_error(exc)
        if os_error is None:
            raise
        if isinstance(os_error, socket.gaierror):  # a host name that does not resolve
            code, hint = EXIT_CONFIG, "set {setting} to an address or a name this host resolves"
        else:
            code, hint = _LISTEN_HINTS.get(
                os_error.errno or 0, (EXIT_UNAVAILABLE, "check {setting}")
            )
        cause = sentence(os_error.strerror or str(os_error))
        raise StartupError(
            part, "cannot listen on", address, cause, hint.format(setting=setting), exit_code=code
        ) from os_error


def _writable_dirs(config: Config) -> list[tuple[Path, str]]:
    dirs = []
    data_dir = config.server.data_dir
    if config.auth.uses_dev_keys:
        dirs.append((data_dir, "data dir"))
    sqlite = config.database.sqlite_path
    if sqlite is not None and sqlite.parent not in (d for d, _ in dirs):
        is_data = sqlite.parent == data_dir
        dirs.append((sqlite.parent, "data dir" if is_data else "database folder"))
    return dirs


def check_data_dirs(config: Config) -> None:
    """Make sure every folder chatd will write to (dev keys, the SQLite file) exists or can
    be created and takes a new file; raise `StartupError` (exit 2) naming it otherwise."""
    for folder, what in _writable_dirs(config):
        setting = "--data-dir or CHATD_DATA_DIR" if what == "data dir" else DATABASE_SETTING
        try:
            if folder.exists() and not folder.is_dir():
                cause = "exists and is not a folder"
            else:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                with tempfile.TemporaryFile(dir=folder):
                    pass
                continue
        except OSError as exc:
            cause = sentence(exc.strerror or str(exc))
        raise StartupError(
            what,
            f"cannot write to the {what}",
            str(folder),
            cause,
            f"set {setting} to a folder chatd may write, or fix its permissions",
            exit_code=EXIT_CONFIG,
        )


def key_error(exc: KeyFileError, config: Config, *, service_key: bool = False) -> StartupError:
    """`exc` from loading the key `config` asks for, as a start-up error naming the setting:
    the profile-service signing key (`service_key`), else the JWKS, the public key file or the
    dev keys in the data dir, whichever ``[auth]`` uses."""
    auth = config.auth
    if service_key:
        return StartupError(
            "profiles",
            "cannot load the profile-service signing key",
            exc.where,
            exc.problem,
            "set [profiles] service_private_key_file or CHATD_SERVICE_PRIVATE_KEY to an RSA "
            "private key in PEM",
            exit_code=EXIT_CONFIG,
        )
    if auth.jwks_url is not None:
        return StartupError(
            "auth",
            "cannot fetch the token keys from",
            auth.jwks_url,
            sentence(exc.problem.removeprefix("cannot load JWKS: ")),
            "is the identity provider reachable from here? check [auth] jwks_url or CHATD_JWKS_URL",
        )
    if auth.public_key_file is not None:
        return StartupError(
            "auth",
            "cannot load the token public key",
            exc.where,
            exc.problem,
            "set [auth] public_key_file or CHATD_JWT_PUBLIC_KEY to an RSA public key in PEM; "
            "`chatd keys` writes a pair",
            exit_code=EXIT_CONFIG,
        )
    return StartupError(
        "auth",
        "cannot load the dev keys",
        exc.where,
        exc.problem,
        "remove the broken dev key files to have new ones made, or set --data-dir",
        exit_code=EXIT_CONFIG,
    )


__all__ = ["check_data_dirs", "key_error", "listening"]
