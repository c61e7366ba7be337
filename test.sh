#!/usr/bin/env bash
# The project's test command: formatting, vet, and every test with the race
# detector, in the main module, in our copy of yamux and in the interop
# module (gRPC, BGP). Every part runs even when an earlier one fails; a
# summary at the end says which passed, and the exit status is 1 if any
# failed.
set -uo pipefail
cd "$(dirname "$0")"

results=()
failed=0

# part NAME COMMAND...: runs one part and records how it ended.
part() {
  local name=$1
  shift
  echo "=== $name"
  local start=$SECONDS
  if "$@"; then
    results+=("passed  $name ($((SECONDS - start))s)")
  else
    results+=("FAILED  $name ($((SECONDS - start))s)")
    failed=1
  fi
}

gofmt_check() {
  local files unformatted
  files=$(git ls-files '*.go' 2>/dev/null) || files=$(find . -name '*.go' -not -path './.git/*')
  unformatted=$(gofmt -l $files) || return 1 # a file gofmt cannot parse
  if [ -n "$unformatted" ]; then
    echo "gofmt would change:"; echo "$unformatted"; return 1
  fi
}

part "gofmt" gofmt_check
part "go vet (main module)" go vet ./...
part "go test -race (main module: unit and end to end)" go test -race -count=1 -timeout 20m ./...
# Our patched copy of yamux passes yamux's own tests and each patch's tests
# (third_party/yamux/PATCHED.md lists the patches).
part "yamux: go vet and go test -race (third_party/yamux)" \
  bash -c 'cd third_party/yamux && go vet ./... && go test -race -count=1 -timeout 10m ./...'
if [ -d interop ]; then
  part "interop: go vet and go test -race (gRPC, BGP)" \
    bash -c 'cd interop && go vet ./... && go test -race -count=1 -timeout 15m ./...'
fi

echo
echo "=== summary"
printf '%s\n' "${results[@]}"
if [ "$failed" -ne 0 ]; then
  echo "test.sh: FAILED"
  exit 1
fi
echo "test.sh: all ${#results[@]} parts passed"
