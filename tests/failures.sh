#!/usr/bin/env bash
# Prints every failed test of the .trx files under DIR in a few lines each: its name, its message and the
# test-code lines of its stack trace. `make test` calls it when the suite fails, so the end of a long log
# (all a CI summary keeps) says which test failed and why.
set -uo pipefail
dir=${1:?usage: tests/failures.sh TRX_DIRECTORY}
shopt -s nullglob globstar
files=("$dir"/**/*.trx)
[ ${#files[@]} -gt 0 ] || { echo "tests/failures.sh: no .trx file under $dir" >&2; exit 0; }
awk '
  function unescape(s) { gsub(/&lt;/, "<", s); gsub(/&gt;/, ">", s); gsub(/&quot;/, "\"", s); gsub(/&apos;/, "'"'"'", s); gsub(/&amp;/, "\\&", s); return s }
  /<UnitTestResult / {
    failed = ($0 ~ /outcome="Failed"/)
    if (failed) { match($0, /testName="[^"]*"/); name = unescape(substr($0, RSTART + 10, RLENGTH - 11)); count++; printf "\nFAILED %s\n", name }
    section = ""; next
  }
  !failed { next }
  /<Message>/ { section = "message"; lines = 0 }
  /<StackTrace>/ { section = "stack" }
  /<\/UnitTestResult>/ { failed = 0; next }
  section == "message" && lines < 8 { line = $0; sub(/.*<Message>/, "", line); sub(/<\/Message>.*/, "", line); if (line != "") { print "  " unescape(line); lines++ } }
  section == "stack" && /in \/.*\/tests\/.*:line [0-9]+/ { line = $0; sub(/<\/?StackTrace>/, "", line); sub(/^ *([0-9]+\) +)?at /, "", line); if (!((name, line) in seen)) { seen[name, line] = 1; print "  at " unescape(line) } }
  /<\/Message>/ { section = "" }
  /<\/StackTrace>/ { section = "" }
  END { if (count) printf "\n%d test(s) failed: the names and messages are above; the whole log is before them\n", count }
' "${files[@]}"
