#!/bin/sh
# browse-files.sh: a browser for directory listings and text files, run by tlsd for each
# connection. Each line the peer sends is a selector, as for serve-files.sh; the connection stays
# open for the next one until the peer ends its side.
#
#   tlsd -p 5602 -- ./browse-files.sh [ROOT]
#   rlwrap openssl s_client -quiet -key key.pem -cert cert.pem -connect HOST:5602
#
# A directory gets its listing, one name a line, directories with a trailing "/", names starting
# with a dot hidden, control characters in names shown as "?". An empty line lists the root. A
# text file is shown with the control characters a terminal would obey removed. Anything else,
# and every refusal, gets one line starting with "Error: ".
set -u

self=$(readlink -f -- "$0") || self=$0
. "$(dirname -- "$self")/files-lib.sh"

files_init "$@"
# What runs in the loop reads files, never the peer's input: that is the loop's.
while read_line; do
	resolve "$line" || continue
	if [ -d "$target" ]; then
		ls -1pq -- "$target" </dev/null | clean_text
	elif [ -f "$target" ] && { [ ! -s "$target" ] || LC_ALL=C grep -qI '' -- "$target" </dev/null; }; then
		clean_text <"$target"
	else
		reply_error 'not a text file (download it with the file service).' "not text: $line"
	fi
done
