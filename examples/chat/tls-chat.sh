#!/bin/sh
# tls-chat.sh: joins a tlsd chat from a terminal with openssl s_client (under rlwrap, for line
# editing and history, when it is installed), and rings the bell when someone mentions you.
#
# Usage: tls-chat.sh [-k KEY] [-c CERT] [-s SERVER_CERT] [-n NAME] HOST [PORT]
#
#   -k KEY          your private key [~/.tls/key.pem]
#   -c CERT         your certificate [~/.tls/cert.pem]
#   -s SERVER_CERT  the chat server's certificate, as its operator gave it to you: the connection
#                   is refused unless the server presents exactly that one. Without it, anyone on
#                   the way can pretend to be the server (a warning says so).
#   -n NAME         the name that rings the bell, your alias in the chat [$LOGNAME]
#   PORT            [5600]
#
# Every line from someone else ("<alias> text") that mentions NAME, in any case, ends with a bell.
# The end of your input (Ctrl-D) leaves the chat.
set -u

me=tls-chat
usage() {
	echo "usage: $me [-k KEY] [-c CERT] [-s SERVER_CERT] [-n NAME] HOST [PORT]" >&2
	exit 2
}

key=$HOME/.tls/key.pem
cert=$HOME/.tls/cert.pem
server=
name=${LOGNAME:-${USER:-}}
while getopts k:c:s:n:h opt; do
	case $opt in
	k) key=$OPTARG ;;
	c) cert=$OPTARG ;;
	s) server=$OPTARG ;;
	n) name=$OPTARG ;;
	*) usage ;;
	esac
done
shift $((OPTIND - 1))
[ "$#" -eq 1 ] || [ "$#" -eq 2 ] || usage
host=$1
port=${2:-5600}

# Line editing: run again under rlwrap, which gives this script a terminal of its own.
if [ -t 0 ] && [ -z "${TLS_CHAT_WRAPPED:-}" ] && command -v rlwrap >/dev/null 2>&1; then
	TLS_CHAT_WRAPPED=1
	export TLS_CHAT_WRAPPED
	exec rlwrap "$0" -k "$key" -c "$cert" -s "$server" -n "$name" "$host" "$port"
fi

case $host in
*:*) address="[$host]:$port" ;;
*) address="$host:$port" ;;
esac
# -quiet would keep the connection open after the end of input; -no_ign_eof, after it, ends it.
set -- s_client -quiet -no_ign_eof -verify_quiet -key "$key" -cert "$cert" -connect "$address"
if [ -n "$server" ]; then
	# The server's self-signed certificate is the only one trusted; no host name is checked, the
	# certificate itself is.
	set -- "$@" -CAfile "$server" -partial_chain -verify_return_error
else
	echo "$me: not checking the server's certificate (no -s SERVER_CERT)" >&2
fi

lower() {
	printf '%s' "$1" | tr '[:upper:]' '[:lower:]'
}

bel=$(printf '\a')
needle=$(lower "$name")
ring() {
	while IFS= read -r line || [ -n "$line" ]; do
		case $line in
		'<'*'> '*)
			text=${line#*> }
			if [ -n "$needle" ]; then
				case $(lower "$text") in
				*"$needle"*) line=$line$bel ;;
				esac
			fi
			;;
		esac
		printf '%s\n' "$line"
	done
}

# The exit status is openssl's (1 when the connection or the server's certificate is refused),
# carried past the pipe on descriptor 3.
{ status=$({ { openssl "$@"; echo "$?" >&3; } | ring >&4; } 3>&1); } 4>&1
exit "${status:-1}"
