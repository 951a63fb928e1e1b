#!/bin/sh
# tlsd-im.sh: the daemon of the peer-to-peer IM example.
#
# Runs tlsd with its standard input fed by the FIFO <dir>/connect (each "host port [fingerprint]"
# line written there dials a peer), and tlsd-im-cmd.sh for every connection, which gives the peer
# its FIFOs <dir>/<fingerprint>/in and out under the peer's lock.
#
# Usage: tlsd-im.sh [tlsd option ...]     (e.g. -e to log to stderr, --aliases FILE to allow
#                                          only listed peers)
# Environment (defaults in brackets):
#   TLSD_IM_DIR   the IM directory [/var/lib/tlsd-im]
#   TLSD_IM_PORT  the port to listen on [18765]; 0 for a random one
#   TLSD_IM_BIND  the address to listen on [0.0.0.0]; 127.0.0.1 behind a Tor hidden service
#   TLSD_IM_KEY   our private key [/etc/tls/key.pem]
#   TLSD_IM_CERT  our certificate [/etc/tls/cert.pem]
set -eu

dir=${TLSD_IM_DIR:-/var/lib/tlsd-im}
port=${TLSD_IM_PORT:-18765}
bind=${TLSD_IM_BIND:-0.0.0.0}
key=${TLSD_IM_KEY:-/etc/tls/key.pem}
cert=${TLSD_IM_CERT:-/etc/tls/cert.pem}

# The per-peer command lives beside this script, even when we are started through a symlink.
self=$(readlink -f -- "$0" 2>/dev/null) || self=$0
here=$(dirname -- "$self")
cmd=$here/tlsd-im-cmd.sh

fail() {
	printf 'tlsd-im: %s\n' "$*" >&2
	exit 1
}

[ -x "$cmd" ] || fail "cannot find the per-peer command $cmd"

# What we make is for our group (the users who chat through this directory), nobody else.
umask 007
if [ ! -d "$dir" ]; then
	# The set-group-ID bit gives peer directories made by any group member the group too.
	mkdir -p -- "$dir" && chmod 2770 -- "$dir" || fail "cannot create $dir"
fi
if [ ! -p "$dir/connect" ]; then
	if [ -e "$dir/connect" ] || [ -L "$dir/connect" ]; then
		fail "$dir/connect exists and is not a FIFO"
	fi
	mkfifo -m 0620 -- "$dir/connect" || fail "cannot create the FIFO $dir/connect"
fi

# Opened read-write, the FIFO always has a writer (tlsd itself), so tlsd never sees the end of
# its input when a writer closes, and the writers never block waiting for a reader while tlsd
# runs. tlsd stays the main process (exec), so signals reach it directly.
exec tlsd -i tlsd-im -b "$bind" -p "$port" -k "$key" -c "$cert" "$@" -- "$cmd" "$dir" <>"$dir/connect"
