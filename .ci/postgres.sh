#!/usr/bin/env bash
# Sourced by .ci/run: a throwaway PostgreSQL on localhost for the shared-study test.
# Installs Debian's postgresql when missing, runs initdb in a temp dir as the
# 'postgres' user (or as the current user when not root) on a free port, exports
# TWINSIGHT_TEST_POSTGRES_URL and stops the server (and removes its files) at exit.
# Try it by hand:  source .ci/postgres.sh && psql "$TWINSIGHT_TEST_POSTGRES_URL" -c 'select 1'

pg_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

if [ -z "$(pg_bin)" ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
  else
    echo "postgres.sh: PostgreSQL is not installed (apt-get install postgresql); skipping" >&2
    return 0 2>/dev/null || exit 0
  fi
fi
_pg_bin="$(pg_bin)"
_pg_dir="$(mktemp -d /tmp/twinsight-pg.XXXXXX)"
_pg_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
_pg_user="$(id -un)"
_pg_as=()
if [ "$(id -u)" -eq 0 ]; then
  _pg_user=postgres
  _pg_as=(runuser -u postgres --)
  chown postgres "$_pg_dir"
fi
"${_pg_as[@]}" "$_pg_bin/initdb" -D "$_pg_dir/data" -U twinsight --auth=trust -E UTF8 >/dev/null
"${_pg_as[@]}" "$_pg_bin/pg_ctl" -D "$_pg_dir/data" -l "$_pg_dir/log" -w \
  -o "-c listen_addresses=127.0.0.1 -c port=$_pg_port -c unix_socket_directories=$_pg_dir" start >/dev/null

stop_postgres() {
  "${_pg_as[@]}" "$_pg_bin/pg_ctl" -D "$_pg_dir/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$_pg_dir"
}
trap stop_postgres EXIT
export TWINSIGHT_TEST_POSTGRES_URL="postgresql+psycopg2://twinsight@127.0.0.1:$_pg_port/postgres"
echo "postgres.sh: PostgreSQL on 127.0.0.1:$_pg_port (user $_pg_user), stopped at exit" >&2
