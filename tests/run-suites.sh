#!/usr/bin/env bash
# `make test`'s suites in two streams side by side: SQLite (everything, Bazel and Chromium
# included) beside PostgreSQL followed by S3. Most of a test's time is spent waiting on the
# processes it drives (Bazel, workers, servers), so on two cores the streams overlap well and
# the whole run takes little more than its longer stream.
#
# Each stream has its own DATA_DIR and database (tests/conftest.py) and its own Redis database
# (TEST_REDIS_DB), so neither sees the other's queues. Every line is prefixed with its stream's
# name; the run fails when either stream fails, and says which.
set -u
cd "$(dirname "$0")/.."
make=${MAKE:-make}

prefix() { sed -u "s/^/[$1] /"; }

set -o pipefail
(TEST_REDIS_DB=11 $make --no-print-directory test-sqlite 2>&1 | prefix sqlite) &
sqlite=$!
(
  failed=0
  TEST_REDIS_DB=15 $make --no-print-directory test-postgres 2>&1 | prefix postgres || failed=1
  TEST_REDIS_DB=14 $make --no-print-directory test-s3 2>&1 | prefix s3 || failed=1
  exit $failed
) &
others=$!

status=0
wait $sqlite || { echo "FAILED: the SQLite suite (lines marked [sqlite])"; status=1; }
wait $others || { echo "FAILED: the PostgreSQL or S3 suite (lines marked [postgres] and [s3])"; status=1; }
exit $status
