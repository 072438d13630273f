#!/usr/bin/env bash
# The last step of `npm test`: mocha over every test, recording each result, then
# docs/compliance.md from those results. Arguments go to mocha (npm test -- --grep kms).
# Exits with mocha's status when mocha fails, else with the table's.
set -uo pipefail
cd "$(dirname "$0")/../.."

rm -f dist/compliance-results.json
node_modules/.bin/mocha --require dist/testbed/compliance/practiceRecorder.js 'dist/**/*.test.js' "$@"
mocha_status=$?

if [ $# -gt 0 ]; then
  # A run narrowed or reshaped by arguments cannot vouch for every practice.
  echo "[compliance] docs/compliance.md not regenerated: mocha ran with arguments ($*)" >&2
  exit "$mocha_status"
fi
node dist/testbed/compliance/complianceTable.js
table_status=$?
if [ "$mocha_status" -ne 0 ]; then exit "$mocha_status"; fi
exit "$table_status"
