#!/usr/bin/env bash
# Installs valkey-server and valkey-tools (Valkey 8) when they are missing: from Debian
# bookworm-backports on bookworm, from the distribution's own archive on newer Debian/Ubuntu.
# Idempotent; needs root (or sudo) the first time only. Waits for a concurrent apt/dpkg run
# (up to 5 minutes) instead of failing on the dpkg lock.
set -euo pipefail

have_valkey() { command -v valkey-server >/dev/null 2>&1 && command -v valkey-cli >/dev/null 2>&1; }

if have_valkey; then
  exit 0
fi

echo "install-valkey: valkey-server/valkey-cli not found; installing with apt" >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-valkey: apt-get is not available; install Valkey 8 (valkey-server, valkey-cli) by hand" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "install-valkey: not root and sudo is missing; cannot install Valkey" >&2
    exit 1
  fi
  SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)

codename=""
if [ -r /etc/os-release ]; then
  codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
fi

target=()
if [ "$codename" = "bookworm" ]; then
  list=/etc/apt/sources.list.d/bookworm-backports.list
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "install-valkey: enabling bookworm-backports ($list)" >&2
    echo "deb http://deb.debian.org/debian bookworm-backports main" | $SUDO tee "$list" >/dev/null
  fi
  target=(-t bookworm-backports)
fi

apt_log="$(mktemp)"
trap 'rm -f "$apt_log"' EXIT

run_apt() {
  # Quiet on success, the full output on failure.
  if ! $SUDO apt-get "${APT_OPTS[@]}" "$@" >"$apt_log" 2>&1; then
    echo "install-valkey: 'apt-get $*' failed:" >&2
    tail -n 40 "$apt_log" >&2
    return 1
  fi
}

ok=0
for attempt in 1 2 3; do
  if run_apt update -q && run_apt install -y -q --no-install-recommends "${target[@]}" valkey-server valkey-tools; then
    ok=1
    break
  fi
  # Another process may have installed it meanwhile.
  if have_valkey; then
    ok=1
    break
  fi
  echo "install-valkey: attempt $attempt failed; retrying in 5 s" >&2
  sleep 5
done
if [ "$ok" -ne 1 ] || ! have_valkey; then
  echo "install-valkey: could not install valkey-server and valkey-tools" >&2
  exit 1
fi

# The package may start a system valkey-server on 6379; the tests do not need it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet valkey-server 2>/dev/null; then
  $SUDO systemctl stop valkey-server || true
fi
valkey-server --version
