#!/bin/sh
# One tlsd host of the cluster, in the foreground: ./host.sh host1 (or host2).
# It trusts PROXY headers from the balancer alone; everyone else reaches it as a direct client.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/cluster.env"
name=${1:?usage: host.sh host1|host2}
case $name in
  host1) address=$HOST1_ADDRESS ;;
  host2) address=$HOST2_ADDRESS ;;
  *) echo "host.sh: unknown host $name (host1 or host2)" >&2; exit 1 ;;
esac
# Every host serves the same identity: clients pin one fingerprint (or check one CA-issued name),
# whichever host the balancer picks. The first host to start makes it; the lock keeps a second
# one from making another at the same moment.
flock "$CLUSTER_RUN/identity.lock" sh -c '
  [ -f "$1/key.pem" ] || tlsd-keygen -k "$1/key.pem" -c "$1/cert.pem" -s tlsd-cluster >/dev/null
' sh "$CLUSTER_RUN"
echo $$ >"$CLUSTER_RUN/$name.pid"
export CLUSTER_HOST=$name
# --max-peers: room for every peer on one host while the other restarts.
exec tlsd -e -i "tlsd-$name" -b "$address" -p "$CLUSTER_PORT" --accept-proxy "$BALANCER_ADDRESS" \
  --max-peers 512 -k "$CLUSTER_RUN/key.pem" -c "$CLUSTER_RUN/cert.pem" -- "$here/service.sh"
