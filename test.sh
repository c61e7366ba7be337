#!/usr/bin/env bash
# The project's test command: formatting, vet, and every test with the race
# detector, in the main module and in the interop module (gRPC, BGP).
set -euo pipefail
cd "$(dirname "$0")"

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change:"; echo "$unformatted"; exit 1
fi
go vet ./...
go test -race -count=1 -timeout 20m ./...
if [ -d interop ]; then
  (cd interop && go vet ./... && go test -race -count=1 -timeout 15m ./...)
fi
