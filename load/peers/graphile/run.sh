#!/bin/sh
# Peer figures: graphile-worker on the local PostgreSQL, in a fresh database
# that is dropped afterwards. Environment (defaults in brackets):
#   PGHOST [127.0.0.1] PGPORT [5432] PGUSER [postgres] BENCH_DB [graphile_bench]
#   ADD_CONCURRENCY [32] ADD_SECONDS [8] WORKER_CONCURRENCY [16]
set -eu
cd "$(dirname "$0")"
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
db="${BENCH_DB:-graphile_bench}"

npm ci --no-audit --no-fund --loglevel=error

psql -X -q -d postgres -v ON_ERROR_STOP=1 -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
trap 'psql -X -q -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db"' EXIT

echo "node $(node --version)"
DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$db" node bench.mjs
