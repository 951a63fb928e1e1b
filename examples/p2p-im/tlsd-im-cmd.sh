#!/bin/sh
# tlsd-im-cmd.sh: run by tlsd (see tlsd-im.sh) for each connection, with SHA256 set to the peer's
# fingerprint. Makes <dir>/<fingerprint>/ and runs std2fifo there, holding the peer's lock for the
# whole session, so that a peer has at most one connection at a time; a second one is refused.
#
# Usage: tlsd-im-cmd.sh <dir>
#
# The lock is flock(2) on <dir>/<fingerprint>/lock, taken on a descriptor that std2fifo inherits:
# the kernel releases it when the session's process ends, however it ends (even by SIGKILL), so a
# crash never leaves a stale lock behind. The file itself stays; it is only a name to lock.
set -eu

me=tlsd-im-cmd
[ "$#" -eq 1 ] || { echo "usage: $me <dir>" >&2; exit 2; }
dir=$1
fp=${SHA256:-}
side=${SIDE:-unknown side}

refuse() {
	printf '%s: %s\n' "$me" "$*" >&2
	exit 1
}

# The fingerprint comes from the peer's certificate and becomes a path: accept nothing but the
# 64 lowercase hex digits tlsd gives, so no name can climb out of the directory.
case $fp in
'' | *[!0-9a-f]*) refuse "refusing a peer without a valid SHA256 fingerprint" ;;
esac
[ "${#fp}" -eq 64 ] || refuse "refusing a peer without a valid SHA256 fingerprint"

peer=$dir/$fp
[ ! -L "$peer" ] || refuse "$peer is a symbolic link; refusing $fp"
if [ ! -d "$peer" ]; then
	mkdir -m 0770 -- "$peer" 2>/dev/null || [ -d "$peer" ] || refuse "cannot create $peer"
fi
[ ! -L "$peer/lock" ] || refuse "$peer/lock is a symbolic link; refusing $fp"

# Appending never truncates whatever the name points to.
exec 9>>"$peer/lock" || refuse "cannot open $peer/lock"
if ! flock -n 9; then
	printf '%s: %s is connected already; refusing a second connection (%s)\n' "$me" "$fp" "$side" >&2
	exit 75
fi

# std2fifo makes the FIFOs in and out (or reuses them), and ends when the peer's side ends.
exec std2fifo -- "$dir"
