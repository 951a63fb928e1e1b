#!/bin/sh
# Runs a command under another Node.js release line: scripts/with-node.sh 24 npm test
#
# The binary is the official build that the npm registry carries as node-<os>-<arch> (the platform
# package behind the `node` package), so this needs nothing but the registry. The newest release
# of the line is unpacked once under $TLSD_NODE_CACHE (default ~/.cache/tlsd/node), then the
# command runs with that `node` first on PATH (npm itself stays the one installed, run by that node)
# and npm_config_nodedir at the package's headers (include/node), so that node-gyp builds addons
# for this version without downloading headers from anywhere else.
set -eu

if [ $# -lt 2 ]; then
  echo "usage: $0 MAJOR COMMAND [ARGUMENT ...]" >&2
  exit 2
fi
line=$1
shift
case $line in
  '' | *[!0-9]*) echo "$0: the release line is a major version such as 22, not '$line'" >&2; exit 2 ;;
esac

case $(uname -s) in
  Linux) os=linux ;;
  Darwin) os=darwin ;;
  *) echo "$0: no Node.js package for $(uname -s)" >&2; exit 1 ;;
esac
case $(uname -m) in
  x86_64 | amd64) arch=x64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) echo "$0: no Node.js package for $(uname -m)" >&2; exit 1 ;;
esac
package=node-$os-$arch

# The newest version of the line: `npm view` lists the matching versions, not in semver order.
version=$(npm view "$package@$line" version --json | node -e '
  let text = "";
  process.stdin.on("data", (chunk) => (text += chunk)).on("end", () => {
    const found = [JSON.parse(text)].flat();
    const key = (v) => v.split(".").map(Number);
    found.sort((a, b) => { const [x, y] = [key(a), key(b)]; return x[0] - y[0] || x[1] - y[1] || x[2] - y[2]; });
    console.log(found.at(-1) ?? "");
  });')
if [ -z "$version" ]; then
  echo "$0: the registry has no $package@$line" >&2
  exit 1
fi

cache=${TLSD_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tlsd/node}
mkdir -p "$cache"
# What is unpacked here runs as whoever runs this script: a directory someone else made or may write
# in (a shared one such as /var/tmp/..., made first by another user) could hold their `node`.
case $(ls -ld "$cache") in
  d????w????* | d???????w?*) owned=no ;;
  *) [ -O "$cache" ] && owned=yes || owned=no ;;
esac
if [ "$owned" != yes ]; then
  echo "$0: $cache is not this user's alone (owner or write permission): refusing to run what it holds" >&2
  exit 1
fi
dir=$cache/$version
if ! [ -x "$dir/bin/node" ]; then
  # Unpacked beside its final place and renamed into it, so that a run beside this one never sees
  # half a tree.
  work=$(mktemp -d "$cache/.unpack.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  tarball=$(cd "$work" && npm pack --silent "$package@$version")
  tar -xzf "$work/$tarball" -C "$work"
  [ -x "$work/package/bin/node" ] && [ -f "$work/package/include/node/node.h" ] || {
    echo "$0: $package@$version has no bin/node or no include/node" >&2
    exit 1
  }
  [ -e "$dir" ] || mv "$work/package" "$dir"
  rm -rf "$work"
  trap - EXIT
fi

PATH=$dir/bin:$PATH
npm_config_nodedir=$dir
export PATH npm_config_nodedir
echo "with-node: Node.js $(node --version) from $package@$version" >&2
exec "$@"
