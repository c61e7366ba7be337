#!/usr/bin/env bash
# The project's test command: formatting, vet, and every test with the race
# detector, in the main module, in our copy of yamux and in the interop
# module (gRPC, BGP).
set -euo pipefail
cd "$(dirname "$0")"

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change:"; echo "$unformatted"; exit 1
fi
go vet ./...
go test -race -count=1 -timeout 20m ./...
# Our patched copy of yamux (third_party/yamux/PATCHED.md) passes yamux's
# own tests.
(cd third_party/yamux && go vet ./... && go test -race -count=1 -timeout 10m ./...)
if [ -d interop ]; then
  (cd interop && go vet ./... && go test -race -count=1 -timeout 15m ./...)
fi
