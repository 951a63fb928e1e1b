#!/bin/sh
# tlsd-im-reconnect.sh: dial again every peer of the IM directory that has an address and no
# session. Run it from time to time (tlsd-im-reconnect.timer does, every minute).
#
# Usage: tlsd-im-reconnect.sh [dir]     (dir: $TLSD_IM_DIR, or /var/lib/tlsd-im)
#
# A peer is <dir>/<fingerprint>/ with a file "address" holding "host port" (one line). Its session
# holds <dir>/<fingerprint>/lock (see tlsd-im-cmd.sh), so a free lock means it is not connected.
# The line written to <dir>/connect pins the fingerprint: tlsd hangs up on a server at that address
# with any other certificate, so a moved or hijacked address never gets our messages.
#
# Prints one line per peer dialed; exits 1 if a peer could not be dialed (bad address file, or
# the daemon is not running), 0 otherwise.
set -u

me=tlsd-im-reconnect
[ "$#" -le 1 ] || { echo "usage: $me [dir]" >&2; exit 2; }
dir=${1:-${TLSD_IM_DIR:-/var/lib/tlsd-im}}
connect=$dir/connect
status=0

warn() {
	printf '%s: %s\n' "$me" "$*" >&2
	status=1
}

[ -p "$connect" ] || { warn "$connect is not a FIFO: has tlsd-im.sh run?"; exit 1; }

for peer in "$dir"/*; do
	fp=${peer##*/}
	# Only fingerprint-named directories are peers; aliases made with ln -s and the like are not.
	case $fp in '' | *[!0-9a-f]*) continue ;; esac
	[ "${#fp}" -eq 64 ] || continue
	[ -d "$peer" ] && [ ! -L "$peer" ] || continue
	[ -f "$peer/address" ] || continue

	# Probing takes the lock for an instant; a connection arriving just then is refused, and this
	# very run dials that peer anyway.
	if [ -e "$peer/lock" ]; then
		flock -n -E 75 "$peer/lock" true
		case $? in
		0) ;;
		75) continue ;;
		*) warn "$peer/lock: cannot check the lock"; continue ;;
		esac
	fi

	host='' port='' extra=''
	read -r host port extra <"$peer/address" || [ -n "$host" ] || {
		warn "$peer/address: empty or unreadable"
		continue
	}
	# Checked here so that a bad file is reported against its name, not as a stray stdin line.
	case $host in
	'' | *[!A-Za-z0-9.:_-]*) warn "$peer/address: bad host name or address (brackets not needed for IPv6)"; continue ;;
	esac
	case $port in
	'' | *[!0-9]*) warn "$peer/address: bad port"; continue ;;
	esac
	[ -z "$extra" ] || { warn "$peer/address: expected \"host port\""; continue; }

	# The FIFO blocks writers while no daemon reads it; do not wait forever for one.
	if timeout 5 sh -c 'printf "%s %s %s\n" "$1" "$2" "$3" >"$4"' sh "$host" "$port" "$fp" "$connect"; then
		printf '%s: dialing %s at %s %s\n' "$me" "$fp" "$host" "$port"
	else
		warn "cannot write to $connect: is tlsd-im.sh running?"
		exit 1
	fi
done
exit "$status"
