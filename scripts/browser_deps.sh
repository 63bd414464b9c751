#!/usr/bin/env bash
# Install what tests/test_browser.py needs, when missing (idempotent):
#   - Debian's chromium at /usr/bin/chromium (apt; as root, or through sudo when available)
#   - the pip package playwright (only its driver is used: Playwright's own browser download
#     does not work here, the test launches /usr/bin/chromium)
# Usage: scripts/browser_deps.sh [PYTHON]   (default: $PY, else python3)
set -euo pipefail

PYTHON="${1:-${PY:-python3}}"
CHROMIUM=/usr/bin/chromium
status=0

if [ -x "$CHROMIUM" ]; then
    echo "browser_deps: chromium present ($CHROMIUM)"
else
    SUDO=()
    can_install=1
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            SUDO=(sudo -n)
        else
            can_install=0
        fi
    fi
    if [ "$can_install" -eq 0 ]; then
        echo "browser_deps: $CHROMIUM is missing and this user can neither run apt-get as root nor use" \
             "passwordless sudo; install it with: apt-get install -y --no-install-recommends chromium" >&2
        status=1
    else
        echo "browser_deps: installing chromium with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        if ! "${SUDO[@]}" apt-get install -y --no-install-recommends chromium; then
            "${SUDO[@]}" apt-get update
            "${SUDO[@]}" apt-get install -y --no-install-recommends chromium
        fi
    fi
fi

if "$PYTHON" -c "import playwright.sync_api" >/dev/null 2>&1; then
    echo "browser_deps: playwright present in $PYTHON"
else
    echo "browser_deps: installing playwright into $PYTHON"
    "$PYTHON" -m pip install --quiet "playwright>=1.40"
fi

exit "$status"
