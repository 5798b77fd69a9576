#!/usr/bin/env bash
# Runs a module's own tests when it has any: `npm test` for Node.js modules, a `test.sh` otherwise.
set -euo pipefail
dir="$1"
if [ -f "$dir/package.json" ]; then
  (cd "$dir" && npm ci --no-audit --no-fund && npm test)
elif [ -x "$dir/test.sh" ]; then
  (cd "$dir" && ./test.sh)
else
  echo "test-module: $dir has no package.json or test.sh; nothing to test"
fi
