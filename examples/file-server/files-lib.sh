# files-lib.sh: what serve-files.sh, browse-files.sh and accept-files.sh share, sourced by them.
# It is the one place where a line from a peer becomes a path, so that it can be checked once:
# every path it gives back is inside the root, after every symbolic link is resolved.
#
# The selector a peer sends is a path relative to the root ("docs/notes.txt"; a leading "/" is
# allowed and means the same). It is never decoded ("%2e%2e" is a name like any other), never
# passed to eval or to a shell, and always quoted. Refused outright: control characters, and any
# component that starts with a dot ("..", ".", ".hidden", "...."), which also keeps the
# uploads in progress (".upload.*") out of sight.

me=${0##*/}
cr=$(printf '\r')
nl='
'

# Logs to tlsd's standard error (its log); peer-chosen text is made printable first.
log() {
	printf '%s: %s: %s\n' "$me" "${ALIAS:-${SHA256:-unknown peer}}" "$(printable "$*")" >&2
}

printable() {
	printf '%s' "$1" | LC_ALL=C tr -c '[:print:]' '?'
}

# Tells the peer why (one line starting with "Error: "), and logs why in more detail.
reply_error() {
	printf 'Error: %s\n' "$1"
	log "$2"
}

# Sets root to the real path of the file root: the argument, else TLSD_FILES_ROOT, else
# /srv/tlsd/files. Exits if it is not a directory.
files_init() {
	given=${1:-${TLSD_FILES_ROOT:-/srv/tlsd/files}}
	# realpath ends its line with a newline; the x keeps a name's own trailing newlines.
	root=$(realpath -e -- "$given" 2>/dev/null && printf x) || root=
	root=${root%x}
	root=${root%"$nl"}
	if [ -z "$root" ] || [ ! -d "$root" ]; then
		reply_error 'the service is not available.' "the file root $given is not a directory"
		exit 1
	fi
	if [ "$root" = / ]; then
		reply_error 'the service is not available.' 'refusing to serve the whole file system'
		exit 1
	fi
}

# Reads one line from standard input into line, without its end (a newline, or CR LF as some
# clients send). dash reads a byte at a time, so what follows the line stays unread for the next
# command. Fails at the end of the input when there is no line left.
read_line() {
	line=
	IFS= read -r line || [ -n "$line" ] || return 1
	line=${line%"$cr"}
}

# resolve SELECTOR: sets target to the real path it names, inside the root, and succeeds; or
# tells the peer why not and fails.
resolve() {
	sel=$1
	case $sel in
	*[[:cntrl:]]*)
		reply_error 'not allowed.' 'refused a selector with control characters'
		return 1
		;;
	esac
	case /$sel in
	*/.*)
		reply_error 'not allowed.' "refused a name starting with a dot: $sel"
		return 1
		;;
	esac
	while :; do
		case $sel in
		/*) sel=${sel#/} ;;
		*) break ;;
		esac
	done
	if ! target=$(realpath -e -- "$root/$sel" 2>/dev/null && printf x); then
		reply_error 'no such file.' "no such file: $sel"
		return 1
	fi
	target=${target%x}
	target=${target%"$nl"}
	case $target in
	"$root" | "$root"/*) ;;
	*)
		reply_error 'not allowed.' "refused $sel, which leads outside the root"
		return 1
		;;
	esac
}

# Keeps what a terminal would obey out of text: C0 controls but tab and newline, DEL, and the C1
# controls as UTF-8 encodes them (some terminals obey those as well). Ends the text with a
# newline if it has none.
clean_text() {
	LC_ALL=C tr -d '\000-\010\013-\037\177' | LC_ALL=C sed -e ':a' -e 's/\xc2[\x80-\x9f]//g' -e 'ta' -e '$a\'
}
