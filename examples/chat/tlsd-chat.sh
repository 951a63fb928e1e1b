#!/bin/sh
# tlsd-chat.sh: one user's chat session, run by tlsd through fp2alias for each connection:
#
#   ncat -l --broker 127.0.0.1 7000
#   tlsd -p 5600 -- fp2alias -a -f aliases -- ./tlsd-chat.sh
#
# Connects (with socat) to the chat broker (ncat --broker, which passes each line to every other
# connection), announces the user with the time, sends every line the user types as
# "<alias> text", shows the user everyone else's lines, and announces the user's leaving when
# their side ends. Control characters are removed both ways, so nobody can drive another's
# terminal. If the broker goes away, the user is told so and the session ends.
#
# Environment: ALIAS (set by fp2alias; required), TLSD_CHAT_BROKER_HOST [127.0.0.1],
# TLSD_CHAT_BROKER_PORT [7000], TLSD_CHAT_LINE_MAX (longer lines are split, in bytes) [1000].
set -u

me=tlsd-chat
host=${TLSD_CHAT_BROKER_HOST:-127.0.0.1}
port=${TLSD_CHAT_BROKER_PORT:-7000}
width=${TLSD_CHAT_LINE_MAX:-1000}

fail() {
	printf '%s: %s\n' "$me" "$*" >&2
	exit 1
}

# fp2alias gives 2 to 32 of a-z and 0-9; checking again means the alias can be printed as it is.
alias=${ALIAS:-}
case $alias in
'' | ? | *[!a-z0-9]*) fail 'no valid ALIAS: run me through fp2alias' ;;
esac
[ "${#alias}" -le 32 ] || fail 'no valid ALIAS: run me through fp2alias'
case $port in '' | *[!0-9]*) fail "TLSD_CHAT_BROKER_PORT is not a port: $port" ;; esac
# The host goes into a socat address, where "," and "!!" have meanings of their own.
case $host in
'' | *[!A-Za-z0-9.:-]*) fail "TLSD_CHAT_BROKER_HOST is not a host name or address: $host" ;;
*:*) broker=TCP6:[$host]:$port ;;
*) broker=TCP:$host:$port ;;
esac
case $width in '' | 0 | *[!0-9]*) fail "TLSD_CHAT_LINE_MAX is not a positive number: $width" ;; esac

# Removes C0 controls (tab and carriage return too), DEL and the C1 controls as UTF-8 encodes
# them, which some terminals obey as well; the loop catches a C1 control that the removal of
# another one just put together. Line by line (-u), so nothing waits in a buffer.
clean() {
	LC_ALL=C sed -u -e 's/[[:cntrl:]]//g' -e ':c1' -e 's/\xc2[\x80-\x9f]//g' -e 'tc1' "$@"
}

notice() {
	printf '*** %s %s at %s\n' "$alias" "$1" "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
}

if ! socat -u /dev/null "$broker,connect-timeout=10" 2>/dev/null; then
	echo 'The chat is closed for now; try again later.'
	fail "cannot reach the broker at $host port $port"
fi
printf 'Welcome, %s. Everyone here reads what you type; end your input (Ctrl-D) to leave.\n' "$alias"

# Each side tells this shell when it ends: the user's side (fold, the only process that reads
# from the user) when the user leaves; the broker's side when the broker closes the connection,
# which also happens when the broker goes away. Then the other side is ended too, so that a user
# is never left typing into a chat that is gone.
exec 3<&0
dir=$(mktemp -d "${TMPDIR:-/tmp}/tlsd-chat.XXXXXXXXXX") || fail 'cannot create a temporary directory'
trap 'rm -rf -- "$dir"' EXIT
trap 'exit 1' HUP INT TERM
mkfifo -m 0600 -- "$dir/to-broker" "$dir/typed" || fail "cannot create FIFOs in $dir"
typer=
leaving=
gone=
trap '[ -n "$leaving" ] || gone=1; [ -z "$typer" ] || kill "$typer" 2>/dev/null' USR1

# The broker's lines (everyone else's), cleaned again (anyone on this host can connect to the
# broker), to the user.
{
	socat - "$broker" <"$dir/to-broker" | clean
	kill -USR1 $$ 2>/dev/null
} &
# Kept open for the notices: socat sees the end of its input when this is closed. A notice the
# broker cannot take any more is dropped (the subshell takes the SIGPIPE, not this shell).
exec 4>"$dir/to-broker"
(notice joined >&4) 2>/dev/null

# The user's lines: split into at most $width bytes (so that no line grows without bound),
# cleaned, empty ones dropped, each under the alias.
stdbuf -oL fold -b -w "$width" <&3 >"$dir/typed" 4>&- &
typer=$!
[ -z "$gone" ] || kill "$typer" 2>/dev/null
clean -e '/^$/d' <"$dir/typed" | while IFS= read -r line || [ -n "$line" ]; do
	printf '<%s> %s\n' "$alias" "$line"
done >&4 &
prefixer=$!
exec 3<&-

# Until the user leaves, or the broker goes away (a signal stops the wait, the trap stops fold).
wait "$typer"
wait "$typer" 2>/dev/null
wait "$prefixer"
leaving=1
(notice left >&4) 2>/dev/null
exec 4>&-
# socat ends its side, the broker closes the connection, socat exits.
until wait; do :; done
if [ -n "$gone" ]; then
	echo '*** The chat has closed; try again later.'
	fail "the broker at $host port $port closed the connection"
fi
