#!/usr/bin/env bash
# The block tools end to end, in the QEMU guest after the bun hardware tests (test/vm/hw.ts runs it
# from the repo root): every namespace filled with a pattern through examples/write-blocks.ts, read
# back whole through examples/read-blocks.ts and compared bit for bit (namespace 1: a 64 MiB round
# trip), plus the refusals (past the end, --count=0, missing input) and the cleanup of a reader
# killed mid-transfer. Leaves $LIBNVM_VM_XCHG/images.json, [{nsid, seed, bytes}], for the host to
# check the images after power off.
#
# Env: LIBNVM_TEST_CTRL, LIBNVM_TEST_EXPECT (JSON, namespaces [{nsid, sizeBytes, lbaSize}]),
# TMPDIR (tmpfs in 2 GiB of guest RAM: at most a pattern file and its read-back at once),
# LIBNVM_VM_XCHG. Prints `blocktools: ok|FAIL <what>` per check, then `blocktools: N passed, M failed`.
set -u

ctrl=${LIBNVM_TEST_CTRL:?LIBNVM_TEST_CTRL is not set}
tmp=${TMPDIR:-/tmp}/blocktools.$$
xchg=${LIBNVM_VM_XCHG:-}
passed=0
failed=0
images=()

ok() { echo "blocktools: ok $*"; passed=$((passed + 1)); }
fail() { echo "blocktools: FAIL $*"; failed=$((failed + 1)); }
now() { date +%s.%N; }
# "<bytes> in <s> s, <MiB/s> MiB/s" from a byte count and two `now` stamps.
rate() { awk -v b="$1" -v t0="$2" -v t1="$3" 'BEGIN { s = t1 - t0; printf "%.1f MiB in %.2f s, %.1f MiB/s", b / 1048576, s, (s > 0 ? b / 1048576 / s : 0) }'; }
# Exit status of a command, its stderr kept in $tmp/err (and shown).
status() { "$@" 2>"$tmp/err"; local rc=$?; sed 's/^/  | /' "$tmp/err"; return $rc; }

mkdir -p "$tmp" || { echo "blocktools: FAIL cannot create $tmp"; echo "blocktools: 0 passed, 1 failed"; exit 1; }
trap 'rm -rf "$tmp"' EXIT

# "nsid sizeBytes lbaSize" per namespace.
if ! nslist=$(bun -e 'for (const n of JSON.parse(process.env.LIBNVM_TEST_EXPECT ?? "").namespaces) console.log(n.nsid, n.sizeBytes, n.lbaSize)') || [ -z "$nslist" ]; then
  fail "LIBNVM_TEST_EXPECT lists no namespaces"
  nslist=""
fi

read_blocks() { bun examples/read-blocks.ts --ctrl="$ctrl" "$@"; }
write_blocks() { bun examples/write-blocks.ts --ctrl="$ctrl" "$@"; }

while read -r nsid size lbasz; do
  [ -n "$nsid" ] || continue
  seed=$((1000 + nsid))
  blocks=$((size / lbasz))
  pat=$tmp/ns$nsid.pattern
  back=$tmp/ns$nsid.read
  what="ns$nsid ($((size / 1048576)) MiB, $lbasz-byte blocks)"

  if ! status bun test/hw/pattern.ts --seed "$seed" --bytes "$size" --out "$pat"; then
    fail "$what: pattern file"
    continue
  fi

  t0=$(now)
  if status write_blocks --ns="$nsid" --lba=0 --input="$pat"; then
    ok "$what: write-blocks whole namespace ($(rate "$size" "$t0" "$(now)"))"
    images+=("{\"nsid\":$nsid,\"seed\":$seed,\"bytes\":$size}")
  else
    fail "$what: write-blocks whole namespace"
  fi

  # Past the end, starting mid-namespace: the first commands would fit, so a tool that checked
  # per command would overwrite the second half with README.md and zeros. The read-back below and
  # the host's image check see it if it did.
  if status write_blocks --ns="$nsid" --lba=$((blocks / 2)) --count="$blocks" --input=README.md; then
    fail "$what: write-blocks past the end exited 0"
  else
    rc=$?
    if [ $rc -eq 1 ] && grep -q "past NSZE" "$tmp/err"; then ok "$what: write-blocks past the end refused (exit 1, past NSZE)"; else fail "$what: write-blocks past the end exited $rc"; fi
  fi

  t0=$(now)
  if status read_blocks --ns="$nsid" --lba=0 --count="$blocks" --output="$back"; then
    ok "$what: read-blocks whole namespace ($(rate "$size" "$t0" "$(now)"))"
    if cmp "$pat" "$back"; then ok "$what: round trip bit for bit"; else fail "$what: round trip differs"; fi
  else
    fail "$what: read-blocks whole namespace"
  fi
  rm -f "$pat" "$back"

  # Past the end: exit 1, no output file, no FILE.partial-<pid>.
  out=$tmp/past$nsid.bin
  for range in "--lba=$blocks --count=1" "--lba=$((blocks - 1)) --count=2"; do
    # shellcheck disable=SC2086 # $range is two options
    if status read_blocks --ns="$nsid" $range --output="$out"; then rc=0; else rc=$?; fi
    left=$(ls "$out" "$out".partial-* 2>/dev/null)
    if [ $rc -eq 1 ] && grep -q "past NSZE" "$tmp/err" && [ -z "$left" ]; then
      ok "$what: read-blocks $range refused, no file left"
    else
      fail "$what: read-blocks $range exited $rc${left:+, left $left}"
    fi
    rm -f "$out" "$out".partial-*
  done
done <<<"$nslist"

# Usage errors: exit 2 before the controller is opened.
if status read_blocks --ns=1 --lba=0 --count=0 --output="$tmp/zero.bin"; then rc=0; else rc=$?; fi
if [ $rc -eq 2 ] && [ ! -e "$tmp/zero.bin" ]; then ok "read-blocks --count=0: usage error (exit 2)"; else fail "read-blocks --count=0 exited $rc"; fi
if status write_blocks --ns=1 --lba=0 --count=0 --input=README.md; then rc=0; else rc=$?; fi
if [ $rc -eq 2 ]; then ok "write-blocks --count=0: usage error (exit 2)"; else fail "write-blocks --count=0 exited $rc"; fi
if status write_blocks --ns=1 --lba=0 --input="$tmp/missing"; then rc=0; else rc=$?; fi
if [ $rc -eq 1 ] && grep -q "missing" "$tmp/err"; then ok "write-blocks missing input: exit 1 naming the file"; else fail "write-blocks missing input exited $rc"; fi

# A reader killed mid-transfer (SIGTERM: the controller's handler exits 143) leaves no file.
first=$(head -n1 <<<"$nslist")
if [ -n "$first" ]; then
  read -r nsid size lbasz <<<"$first"
  out=$tmp/killed.bin
  # bun itself in the background (not a shell function, which would fork a subshell): $! is its pid.
  bun examples/read-blocks.ts --ctrl="$ctrl" --ns="$nsid" --lba=0 --count=$((size / lbasz)) --output="$out" 2>/dev/null &
  pid=$!
  # Wait (at most ~20 s) for FILE.partial-<pid>: the transfer has started.
  for _ in $(seq 400); do [ -e "$out.partial-$pid" ] && break; sleep 0.05; done
  kill -TERM "$pid" 2>/dev/null
  if wait "$pid"; then rc=0; else rc=$?; fi
  left=$(ls "$out" "$out".partial-* 2>/dev/null)
  if [ $rc -eq 143 ] && [ -z "$left" ]; then
    ok "read-blocks killed mid-transfer: exit 143, no file left"
  elif [ $rc -eq 0 ] && [ "$left" = "$out" ]; then
    ok "read-blocks finished before SIGTERM arrived: output complete, no partial file"
  else
    fail "read-blocks killed mid-transfer: exit $rc${left:+, left $left}"
  fi
  rm -f "$out" "$out".partial-*
fi

if [ -n "$xchg" ]; then
  json="[$(IFS=,; echo "${images[*]}")]"
  if echo "$json" >"$xchg/images.json"; then ok "images.json: ${#images[@]} image(s) described"; else fail "cannot write $xchg/images.json"; fi
fi

echo "blocktools: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
