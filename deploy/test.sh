#!/usr/bin/env bash
# The README's test command: makes sure a RabbitMQ runs here (or uses
# AMQP_URL), that promtool, the example receiver's Python package,
# iproute2 (the cluster tests' network namespaces) and Debian's headless
# Chromium and its driver (the console tests) are installed, deletes what
# earlier test runs left on the local broker, then runs every test of the
# workspace. Extra arguments go to `cargo test` (say,
# `-p tests --test dispatch`).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup-local.sh broker promtool python network browser leftovers
exec cargo test --workspace --locked "$@"
