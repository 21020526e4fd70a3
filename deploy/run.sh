#!/usr/bin/env bash
# The README's run command: makes sure a RabbitMQ runs here (or uses
# AMQP_URL), then runs the dispatcher on deploy/local.toml, which delivers
# every event to the example receiver (deploy/examples/receiver.py, port 9000).
# Extra arguments go to the dispatcher. SIGTERM or Ctrl-C stops it cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup-local.sh broker
exec cargo run --release --locked -q -p dispatcher --bin hookpost-dispatcher -- --config deploy/local.toml "$@"
