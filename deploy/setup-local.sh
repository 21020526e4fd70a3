#!/usr/bin/env bash
# Makes what hookpost's run and test commands need available on this machine
# (Debian or Ubuntu; installs as root with apt-get):
#   broker    a RabbitMQ to talk to: the one at AMQP_URL if set, else a local
#             rabbitmq-server, installed and started if missing, with every
#             feature flag enabled (quorum queues' at-least-once dead-lettering)
#   promtool  Prometheus' promtool (Debian package prometheus), which the tests
#             use to check the metrics exposition and the alert rules
#   python    the example receiver's package (standardwebhooks, from PyPI)
#   network   iproute2's `ip`, which the cluster tests use to give each
#             RabbitMQ node its own network namespace (they need root)
#   browser   Debian's chromium and chromium-driver (/usr/bin/chromedriver),
#             which the console's browser tests drive headless
#   leftovers on the local broker (not at AMQP_URL; root), deletes what
#             earlier test runs left behind: the queues and exchanges of
#             every test prefix `hpt-<pid>-<random>` whose process <pid> no
#             longer runs (a killed test never cleans up, and hundreds of
#             stale quorum queues can fill the broker's open files)
# Usage: deploy/setup-local.sh broker [promtool] [python] [network] [browser] [leftovers]
# Each step does nothing when what it provides is already there.
set -euo pipefail

say() { printf '=== %s\n' "$*" >&2; }

apt_install() {
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
    say "Missing: $*. Install it (Debian: apt-get install $*) and run again."
    exit 1
  fi
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  say "Installing $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

broker_listening() {
  (exec 3<>/dev/tcp/127.0.0.1/5672) >/dev/null 2>&1
}

step_broker() {
  if [ -n "${AMQP_URL:-}" ]; then
    say "Using the broker at AMQP_URL"
    return
  fi
  if broker_listening; then
    # A local broker we may administer: make sure every feature flag is on.
    if [ "$(id -u)" -eq 0 ] && command -v rabbitmqctl >/dev/null 2>&1; then
      rabbitmqctl -q enable_feature_flag all >/dev/null 2>&1 || true
    fi
    return
  fi
  command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  say "Starting RabbitMQ"
  $sudo rabbitmq-server -detached >/dev/null 2>&1 || true
  # At most about 3 minutes for a first start.
  for _ in $(seq 1 90); do
    broker_listening && $sudo rabbitmqctl -q await_startup --timeout 10 >/dev/null 2>&1 && break
    sleep 2
  done
  if ! $sudo rabbitmqctl -q await_startup --timeout 10 >/dev/null 2>&1; then
    say "RabbitMQ did not start; see its log (/var/log/rabbitmq/) or set AMQP_URL"
    exit 1
  fi
  # Quorum queues' at-least-once dead-lettering needs every feature flag on.
  $sudo rabbitmqctl -q enable_feature_flag all >/dev/null 2>&1 || true
}

step_promtool() {
  command -v promtool >/dev/null 2>&1 || apt_install prometheus
}

step_python() {
  python3 -c 'import standardwebhooks' >/dev/null 2>&1 && return
  command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1 || apt_install python3-pip
  say "Installing the standardwebhooks Python package"
  python3 -m pip install -q standardwebhooks 2>/dev/null \
    || python3 -m pip install -q --break-system-packages standardwebhooks
}

step_network() {
  command -v ip >/dev/null 2>&1 || apt_install iproute2
}

step_browser() {
  [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && return
  apt_install chromium chromium-driver fonts-dejavu-core
}

step_leftovers() {
  [ -n "${AMQP_URL:-}" ] && return
  { [ "$(id -u)" -eq 0 ] && command -v rabbitmqctl >/dev/null 2>&1 && broker_listening; } || return 0
  local names prefix pid stale=""
  names=$({ rabbitmqctl -q list_queues name --no-table-headers
            rabbitmqctl -q list_exchanges name --no-table-headers; } 2>/dev/null \
    | grep -oE '^hpt-[0-9]+-[0-9a-f]{10}[.]' | sort -u) || return 0
  for prefix in $names; do
    pid=${prefix#hpt-}
    pid=${pid%%-*}
    [ -d "/proc/$pid" ] && continue
    stale="$stale${stale:+, }<<\"$prefix\">>"
  done
  [ -z "$stale" ] && return
  say "Deleting what earlier test runs left on the local broker: [$stale]"
  # One call for all: quorum queues and exchanges under each stale prefix.
  rabbitmqctl -q eval "
    Ps = [$stale],
    Stale = fun(N) -> lists:any(fun(P) -> binary:match(N, P) =:= {0, byte_size(P)} end, Ps) end,
    Qs = [rabbit_amqqueue:delete(Q, false, false, <<\"hookpost test cleanup\">>)
         || Q <- rabbit_amqqueue:list(<<\"/\">>), Stale(element(4, amqqueue:get_name(Q)))],
    Xs = [rabbit_exchange:delete(element(2, E), false, <<\"hookpost test cleanup\">>)
         || E <- rabbit_exchange:list(<<\"/\">>), Stale(element(4, element(2, E)))],
    {queues, length(Qs), exchanges, length(Xs)}." >&2 \
    || say "Could not delete them (continuing): see rabbitmqctl's message above"
}

for step in "$@"; do
  case "$step" in
    broker | promtool | python | network | browser | leftovers) "step_$step" ;;
    *) say "unknown step: $step"; exit 2 ;;
  esac
done
