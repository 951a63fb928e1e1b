#!/bin/sh
# HAProxy in front of the two hosts, in the foreground, logging to stderr: ./balancer.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/cluster.env"
echo $$ >"$CLUSTER_RUN/balancer.pid"
exec haproxy -db -f "$here/haproxy.cfg"
