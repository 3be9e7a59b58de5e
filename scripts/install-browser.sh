#!/usr/bin/env bash
# Installs Debian's Chromium for the browser test (Playwright drives it; Playwright's own browser
# download cannot run here). Idempotent: does nothing when Chromium is already installed.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version
