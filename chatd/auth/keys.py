"""RS256 key pairs as PEM files: generate, write safely, load, and the dev pair in the data dir.

Private keys are created with mode 0600 from the first byte (never chmod-ed after the fact) and
published with a hard link from a temporary file, so a concurrent reader never sees half a key
and two processes starting at once cannot both "win": the loser simply loads the winner's key.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

if TYPE_CHECKING:
    from chatd.config import Config

DEFAULT_KEY_BITS = 2048
PRIVATE_KEY_NAME = "jwt-private.pem"
PUBLIC_KEY_NAME = "jwt-public.pem"
DEV_PRIVATE_KEY_NAME = "dev-jwt-private.pem"
DEV_PUBLIC_KEY_NAME = "dev-jwt-public.pem"


class KeyFileError(Exception):
    """A key file is missing, unreadable, not PEM, not RSA, or already exists; names the path.

    `where` (the file, folder or URL) and `problem` are kept apart so start-up can say which
    setting to fix (`chatd.startup`); ``str()`` is ``"where: problem"``.
    """

    def __init__(self, where: object, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = str(where)
        self.problem = problem


def generate_private_key(bits: int = DEFAULT_KEY_BITS) -> rsa.RSAPrivateKey:
    """A fresh RSA private key (public exponent 65537)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def private_pem(key: rsa.RSAPrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (the file mode protects it)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: rsa.RSAPublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM (``-----BEGIN PUBLIC KEY-----``)."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _publish(path: Path, data: bytes, mode: int) -> bool:
    """Create `path` with `data` and `mode` atomically; False if it already existed."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_key_pair(
    out_dir: Path,
    *,
    private_name: str = PRIVATE_KEY_NAME,
    public_name: str = PUBLIC_KEY_NAME,
    bits: int = DEFAULT_KEY_BITS,
) -> tuple[Path, Path]:
    """Generate a pair into `out_dir` (created 0700 if missing); return (private, public) paths.

    Raises `KeyFileError` if either file exists: overwriting a key silently invalidates every
    token already issued with it.
    """
    private_path, public_path = out_dir / private_name, out_dir / public_name
    for path in (private_path, public_path):
        if path.exists():
            raise KeyFileError(path, "already exists; remove it first or choose another --out")
    try:
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = generate_private_key(bits)
        if not _publish(private_path, private_pem(key), 0o600):
            raise KeyFileError(private_path, "already exists")
        _publish(public_path, public_pem(key.public_key()), 0o644)
    except OSError as exc:
        raise KeyFileError(exc.filename or out_dir, f"cannot write key: {exc.strerror}") from None
    return private_path, public_path


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(path, f"cannot read key file: {exc.strerror}") from None


def load_private_key(source: Path | bytes | str | rsa.RSAPrivateKey) -> rsa.RSAPrivateKey:
    """An RSA private key from a PEM file path, PEM bytes/text, or a key object.

    Raises `KeyFileError` when it cannot be read or is not an unencrypted RSA private key.
    """
    if isinstance(source, rsa.RSAPrivateKey):
        return source
    data, where = _pem_source(source)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(where, f"not a PEM private key ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFileError(where, "not an RSA key (RS256 needs RSA)")
    return key


def load_public_key(source: Path | bytes | str | rsa.RSAPublicKey) -> rsa.RSAPublicKey:
    """An RSA public key from a PEM file path, PEM bytes/text, or a key object.

    A private key PEM is accepted too (its public half is used), so a dev setup may point both
    sides at one file. Raises `KeyFileError` when it is not RSA or not PEM.
    """
    if isinstance(source, rsa.RSAPublicKey):
        return source
    data, where = _pem_source(source)
    if b"PRIVATE KEY" in data:
        return load_private_key(data).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(where, f"not a PEM public key ({exc})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyFileError(where, "not an RSA key (RS256 needs RSA)")
    return key


def _pem_source(source: Path | bytes | str) -> tuple[bytes, str]:
    if isinstance(source, Path):
        return _read(source), str(source)
    data = source.encode() if isinstance(source, str) else source
    return data, "PEM data"


def ensure_dev_keys(data_dir: Path) -> tuple[Path, Path, bool]:
    """Make sure the dev pair exists in `data_dir`; return (private, public, created).

    The embedded default signs `chatd token` output with this pair and verifies clients with
    its public half. A missing public file is re-derived from the private key; if both are
    missing a new pair is generated. Raises `KeyFileError` if they cannot be read or written.
    """
    private_path = data_dir / DEV_PRIVATE_KEY_NAME
    public_path = data_dir / DEV_PUBLIC_KEY_NAME
    created = False
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not private_path.exists():
            created = _publish(private_path, private_pem(generate_private_key()), 0o600)
        if not public_path.exists():
            public = load_private_key(private_path).public_key()
            _publish(public_path, public_pem(public), 0o644)
    except OSError as exc:
        where = exc.filename or data_dir
        raise KeyFileError(where, f"cannot write dev key: {exc.strerror}") from None
    return private_path, public_path, created


def demo_token_key(config: Config) -> rsa.RSAPrivateKey | None:
    """The key the demo page's token endpoint signs with, or None when it must not exist.

    Only with ``[server] demo_page`` on AND no external key source (no ``public_key_file``, no
    ``jwks_url``): then the server verifies clients with the dev pair in its own data dir
    (created if missing), which is trusted by nothing else. A production config always names
    its key source, so it can never mint tokens for the world even with the demo page on.
    Raises `KeyFileError` when the dev pair cannot be read or written.
    """
    if not (config.server.demo_page and config.auth.uses_dev_keys):
        return None
    private_path, _, _ = ensure_dev_keys(config.server.data_dir)
    return load_private_key(private_path)


def dev_signing_key(config: Config) -> tuple[Path, bool]:
    """The private key `chatd token` signs with, and whether it was just generated.

    ``[auth] dev_private_key_file`` if set; otherwise, when no key source is configured, the
    dev pair in the data dir (created if missing). Raises `KeyFileError` when the server
    verifies with a key whose private half chatd cannot know (PEM file or JWKS).
    """
    if config.auth.dev_private_key_file is not None:
        return config.auth.dev_private_key_file, False
    if not config.auth.uses_dev_keys:
        raise KeyFileError(
            "auth",
            "tokens are verified with an external key; set [auth] dev_private_key_file "
            "to the matching private key to mint tokens",
        )
    private_path, _, created = ensure_dev_keys(config.server.data_dir)
    return private_path, created
