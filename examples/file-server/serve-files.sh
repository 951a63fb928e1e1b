#!/bin/sh
# serve-files.sh: sends the file named by the first line the peer sends, then hangs up.
# A Gopher-like download service, run by tlsd for each connection:
#
#   tlsd -p 5601 -- ./serve-files.sh [ROOT]
#   echo docs/notes.txt | openssl s_client -quiet -key key.pem -cert cert.pem -connect HOST:5601
#
# ROOT is the file root (default: TLSD_FILES_ROOT, else /srv/tlsd/files). The reply is the file's
# bytes exactly; a refusal is one line starting with "Error: " (see files-lib.sh for the rules).
set -u

self=$(readlink -f -- "$0") || self=$0
. "$(dirname -- "$self")/files-lib.sh"

files_init "$@"
if ! read_line; then
	reply_error 'send the name of a file, then a newline.' 'no selector'
	exit 1
fi
resolve "$line" || exit 1
if [ ! -f "$target" ]; then
	reply_error 'not a file (browse directories with the browsing service).' "not a regular file: $line"
	exit 1
fi
log "sending $line"
exec cat -- "$target"
