#!/bin/sh
# The whole cluster on one machine, in the background:
#   ./cluster.sh start            two tlsd hosts, then HAProxy in front of them
#   ./cluster.sh rolling-restart  restart each host in turn, without cutting a session
#   ./cluster.sh status           HAProxy's view of the hosts
#   ./cluster.sh stop             stop everything (tlsd ends its sessions gracefully)
# Logs and pid files are in $CLUSTER_RUN (cluster.env).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/cluster.env"
sock=$CLUSTER_RUN/haproxy.sock
: "${DRAIN_SECONDS:=60}"

die() { echo "cluster.sh: $*" >&2; exit 1; }

# Runs $2 (a shell command) every 0.2 s until it succeeds; returns 1 after $1 seconds.
wait_for() {
  seconds=$1 until=$2 tries=0
  while ! eval "$until"; do
    tries=$((tries + 1))
    [ "$tries" -le $((seconds * 5)) ] || return 1
    sleep 0.2
  done
}

running() { [ -f "$CLUSTER_RUN/$1.pid" ] && kill -0 "$(cat "$CLUSTER_RUN/$1.pid")" 2>/dev/null; }

# One command to HAProxy's admin socket (socat, from Debian's package of that name).
haproxy_cmd() { echo "$1" | socat -t 5 - "UNIX-CONNECT:$sock"; }

# A field of `show servers state` for one host: 6 is its state from the checks (2: running),
# 7 its administrative state (0: ready; 8: drain).
server_field() {
  haproxy_cmd "show servers state tlsd-hosts" | awk -v name="$1" -v field="$2" '$4 == name { print $field }'
}

# Current sessions of one host, as HAProxy counts them.
sessions() {
  haproxy_cmd "show stat" | awk -F, -v name="$1" '$1 == "tlsd-hosts" && $2 == name { print $5 }'
}

start_host() {
  log=$CLUSTER_RUN/$1.log
  touch "$log"
  before=$(grep -c 'Listening on' "$log" || true)
  setsid "$here/host.sh" "$1" >>"$log" 2>&1 </dev/null &
  wait_for 30 "[ \$(grep -c 'Listening on' '$log' || true) -gt $before ]" || die "$1 is not listening after 30 s: see $log"
}

stop_pid() {
  running "$1" || return 0
  kill -TERM "$(cat "$CLUSTER_RUN/$1.pid")"
  wait_for 60 "! running $1" || die "$1 still runs 60 s after SIGTERM"
}

case ${1:-} in
  start)
    for name in host1 host2; do running "$name" || start_host "$name"; done
    if ! running balancer; then
      setsid "$here/balancer.sh" >>"$CLUSTER_RUN/balancer.log" 2>&1 </dev/null &
      wait_for 30 "haproxy_cmd 'show info' >/dev/null 2>&1" || die "HAProxy's admin socket does not answer: see $CLUSTER_RUN/balancer.log"
    fi
    wait_for 30 '[ "$(server_field host1 6)$(server_field host2 6)" = 22 ]' || die "HAProxy's checks do not find both hosts up: see the logs in $CLUSTER_RUN"
    echo "cluster: $BALANCER_ADDRESS port $CLUSTER_PORT, fingerprint $(tlsd-keygen --fingerprint "$CLUSTER_RUN/cert.pem")"
    ;;
  rolling-restart)
    for name in host1 host2; do
      # No new sessions for this host; the others take them. Then wait for its sessions to end
      # (at most DRAIN_SECONDS: after that tlsd's graceful shutdown ends them), restart it, and
      # let it take sessions again once HAProxy's checks find it up.
      haproxy_cmd "set server tlsd-hosts/$name state drain" >/dev/null
      wait_for "$DRAIN_SECONDS" "[ \"\$(sessions $name)\" = 0 ]" ||
        echo "cluster: $name still has sessions after $DRAIN_SECONDS s: its shutdown ends them"
      stop_pid "$name"
      start_host "$name"
      wait_for 30 "[ \"\$(server_field $name 6)\" = 2 ]" || die "HAProxy's checks do not find $name up"
      haproxy_cmd "set server tlsd-hosts/$name state ready" >/dev/null
      echo "cluster: $name restarted"
    done
    ;;
  status)
    haproxy_cmd "show stat" | awk -F, '$1 == "tlsd-hosts" && $2 ~ /^host/ { print $2, $18, "sessions " $5 }'
    ;;
  stop)
    stop_pid balancer
    for name in host1 host2; do stop_pid "$name"; done
    ;;
  *)
    die "usage: cluster.sh start|rolling-restart|status|stop"
    ;;
esac
