#!/usr/bin/env bash
# Installs the system packages the browser, compose and PostgreSQL tests use, when we can.
# Never fails the build: the tests that need these skip with a reason instead (the
# PostgreSQL runs fail instead of skipping under CI=true, see tests/backend/conftest.py).
set -u
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    need+=(docker-compose)
fi
# The tests start their own throwaway server (initdb + pg_ctl as an unprivileged user).
compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: not root or no apt-get; browser/compose/PostgreSQL tests will skip (missing: ${need[*]})"
    exit 0
fi
echo "installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt_install() { apt-get install -y -qq --no-install-recommends "$@"; }
# Only PostgreSQL's binaries are wanted: postgresql-common first, told not to create (and
# start) the system's main cluster when the server package is installed.
no_main_cluster() {
    [[ " ${need[*]} " == *" postgresql "* ]] || return 0
    apt_install postgresql-common \
        && sed -ri 's/^#?\s*create_main_cluster\s*=.*$/create_main_cluster = false/' \
            /etc/postgresql-common/createcluster.conf
}
(apt-get update -qq && no_main_cluster && apt_install "${need[@]}") >/tmp/dora-apt.log 2>&1 \
    || echo "note: apt-get failed (see /tmp/dora-apt.log); browser/compose/PostgreSQL tests will skip"
exit 0
