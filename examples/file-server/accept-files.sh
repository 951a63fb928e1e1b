#!/bin/sh
# accept-files.sh: stores an upload in the uploader's own directory, ROOT/ALIAS/, run by tlsd
# through fp2alias (which sets ALIAS, and turns away peers it does not know):
#
#   tlsd -p 5603 -- fp2alias -- ./accept-files.sh [ROOT]
#   (echo my-file; cat my-file) | gnutls-cli --insecure --x509keyfile=key.pem \
#       --x509certfile=cert.pem --port=5603 HOST
#
# The peer sends a file name and a newline, then the file's bytes, then ends its side; the reply
# is "Stored NAME (N bytes)." or one line starting with "Error: ". The directory ROOT/ALIAS must
# exist (made by the administrator): no directory, no upload. The name is one plain file name: no
# "/", no leading dot, no control characters. The file appears whole or not at all (it is written
# to a temporary file beside it, then renamed), and a file of that name is replaced, never
# written through: a symbolic link in its place is replaced by the new file.
#
# Environment: TLSD_FILES_ROOT (the default ROOT, else /srv/tlsd/files), TLSD_FILES_MAX_UPLOAD
# (the largest upload in bytes, default 1073741824; 0 for no limit).
set -u

self=$(readlink -f -- "$0") || self=$0
. "$(dirname -- "$self")/files-lib.sh"

files_init "$@"
max=${TLSD_FILES_MAX_UPLOAD:-1073741824}
case $max in
'' | *[!0-9]*)
	reply_error 'the service is not available.' "TLSD_FILES_MAX_UPLOAD is not a number: $max"
	exit 1
	;;
esac

# fp2alias only gives aliases of 2 to 32 of a-z and 0-9; anything else did not come from it.
user=${ALIAS:-}
case $user in
'' | ? | *[!a-z0-9]*)
	reply_error 'you may not upload here.' 'no valid ALIAS (run me through fp2alias)'
	exit 1
	;;
esac
if [ "${#user}" -gt 32 ]; then
	reply_error 'you may not upload here.' 'no valid ALIAS (run me through fp2alias)'
	exit 1
fi
dir=$root/$user
if [ ! -d "$dir" ] || [ -L "$dir" ]; then
	reply_error 'you may not upload here.' "no upload directory $dir"
	exit 1
fi

if ! read_line; then
	reply_error 'send a file name and a newline, then the file.' 'no file name'
	exit 1
fi
name=$line
case $name in
'' | .* | */* | *[[:cntrl:]]*)
	reply_error 'not allowed: a name is one file name, without "/", a leading dot or control characters.' "refused the name $name"
	exit 1
	;;
esac
if [ "${#name}" -gt 255 ]; then
	reply_error 'not allowed: the name is too long.' 'refused a name longer than 255 bytes'
	exit 1
fi

tmp=$(mktemp -- "$dir/.upload.XXXXXXXXXX") || {
	reply_error 'cannot store the file.' "cannot create a temporary file in $dir"
	exit 1
}
trap 'rm -f -- "$tmp"' EXIT
trap 'exit 1' HUP INT TERM

# One byte over the limit is enough to know the upload is too large; the rest is not read.
if [ "$max" -gt 0 ]; then
	head -c "$((max + 1))" >"$tmp"
else
	cat >"$tmp"
fi || {
	reply_error 'cannot store the file.' "writing $tmp failed"
	exit 1
}
size=$(wc -c <"$tmp")
size=$((size + 0))
if [ "$max" -gt 0 ] && [ "$size" -gt "$max" ]; then
	reply_error "too large: the limit is $max bytes." "refused an upload over $max bytes for $name"
	exit 1
fi

# mktemp made it 0600; give it the mode any new file would have.
chmod -- "$(printf '%o' "$((0666 & ~$(umask)))")" "$tmp"
# -T: if NAME is a directory (or a link to one), fail rather than move the file into it.
if ! mv -f -T -- "$tmp" "$dir/$name" 2>/dev/null; then
	reply_error 'cannot store the file under that name.' "cannot rename $tmp to $dir/$name"
	exit 1
fi
log "stored $name ($size bytes)"
printf 'Stored %s (%s bytes).\n' "$name" "$size"
