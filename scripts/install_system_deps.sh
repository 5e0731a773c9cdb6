#!/usr/bin/env bash
# Installs the system packages the browser and compose tests use, when we can.
# Never fails the build: the tests that need these skip with a reason instead.
set -u
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    need+=(docker-compose)
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: not root or no apt-get; browser/compose tests will skip (missing: ${need[*]})"
    exit 0
fi
echo "installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
(apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}") >/tmp/dora-apt.log 2>&1 \
    || echo "note: apt-get failed (see /tmp/dora-apt.log); browser/compose tests will skip"
exit 0
