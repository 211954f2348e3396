#!/bin/sh
# Mutation testing of one module group of test/mutation/modules.json (or all of them, one after another):
#   npm run test:mutation -- routing
# Each group's report: reports/mutation/<group>.json (and .html); its score is printed at the end.
# Stryker 10 needs Node 22 or later: where `node` is older, Node 22 comes from the npm registry (the `node`
# package), so the mutants (and the tests) run on Node 22, which the code must support anyway.
set -eu
cd "$(dirname "$0")/../.."
groups=${1:-$(node -e 'console.log(Object.keys(require("./test/mutation/modules.json")).join(" "))')}
node=node
if [ "$(node -p 'process.versions.node.split(".")[0] >= 22')" != "true" ]; then
  # Only the binary's path comes out of npx: run inside `npx -c`, the tests' own `npx buf ...` would
  # inherit npm's exec settings and fail.
  node=$(npx -y -p node@22 -c 'command -v node')
fi
for group in $groups; do
  echo "== $group"
  MUTATION_GROUP=$group "$node" node_modules/@stryker-mutator/core/bin/stryker.js run
done
