# Shared by scripts/*: a project venv with the project installed (re-installed when
# pyproject.toml changes), the npm clients used by the conformance tests, and the headless
# Chromium the browser test drives.
# shellcheck shell=bash
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }

ensure_venv() {  # $1 = extras, e.g. "test" or ""
    local extras="${1:-}" spec="$ROOT" stamp
    [ -n "$extras" ] && spec="$ROOT[$extras]"
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        python3 -m venv "$VENV"
    fi
    stamp="$VENV/.installed-$(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)-${extras:-base}"
    if [ ! -f "$stamp" ]; then
        log "installing chatd${extras:+ with [$extras]} into .venv"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec"
        touch "$stamp"
    fi
}

# stomp.py (a conformance client) installs a top-level package named `stomp`, like our library:
# it lives in its own folder so that it never shadows ours in the venv.
STOMPPY_SPEC="stomp.py==9.0.0"
ensure_stomppy() {
    local dir="$VENV/stomppy"
    if [ ! -f "$dir/.installed-$STOMPPY_SPEC" ]; then
        log "installing $STOMPPY_SPEC into .venv/stomppy"
        rm -rf "$dir"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            --target "$dir" "$STOMPPY_SPEC" && touch "$dir/.installed-$STOMPPY_SPEC"
    fi
}

ensure_node_clients() {
    local dir="$ROOT/tests/node"
    if ! command -v npm >/dev/null; then
        log "npm missing: installing Debian's nodejs/npm"
        apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
    fi
    if [ ! -f "$dir/node_modules/.installed" ] || [ "$dir/package.json" -nt "$dir/node_modules/.installed" ]; then
        log "installing npm conformance clients"
        (cd "$dir" && npm install --no-audit --no-fund --silent >/dev/null) && touch "$dir/node_modules/.installed"
    fi
}

# The browser test drives Debian's Chromium through playwright-core (which downloads no browser
# of its own): install the package when it is missing, like nodejs above.
CHROMIUM="/usr/bin/chromium"
ensure_chromium() {
    if [ ! -x "$CHROMIUM" ]; then
        log "chromium missing: installing Debian's chromium"
        apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    fi
}

# The container test builds and runs the image with Debian's podman (runc, because crun
# refuses hybrid cgroups) and makes its base with debootstrap where no registry is reachable.
ensure_podman() {
    if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null \
            || ! command -v runc >/dev/null; then
        log "podman/debootstrap/runc missing: installing Debian's packages"
        apt-get update -qq && apt-get install -y -qq podman debootstrap runc >/dev/null
    fi
}
