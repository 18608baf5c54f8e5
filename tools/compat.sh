#!/usr/bin/env bash
# The version matrix: which TensorFlow / Keras combinations hvd_keras works on.
#
# For every combination in tools/versions.txt (each row, the extra
# combinations included), one at a time: a virtual environment of its own set
# up by tools/bootstrap.sh (CPU; horovod built against that TensorFlow, the
# build cached per TensorFlow version as hvd-keras build-horovod does), then
# `import hvd_keras` and the core tests with that environment's python (the
# tests start horovodrun from the same environment). A combination that fails
# is recorded with its reason and the matrix goes on.
#
# Usage: tools/compat.sh [combination...]        (or: make compat)
#   combination: a TensorFlow version (all its rows) or <tensorflow>-keras<keras>,
#                e.g. 2.16.2-keras3.15.1; default: every combination
# Environment:
#   HVD_KERAS_COMPAT_FRESH=1     delete a combination's environment first (default:
#                                reuse it; bootstrap reinstalls whatever changed)
#   HVD_KERAS_COMPAT_TIMEOUT=s   limit for one combination's tests (default 3600)
# Writes, under .venv-compat/:
#   <tensorflow>-keras<keras>/      the environment
#   <tensorflow>-keras<keras>.log   bootstrap, import check and pytest output
#   <tensorflow>-keras<keras>.xml   pytest's JUnit report
#   results.txt                     one tab-separated line per combination (its latest
#                                   run): build, tests, date and the commit tested
#   results.md                      the Markdown table, also printed at the end
# Exits 0 when every combination it ran passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=.venv-compat
RESULTS=$OUT/results.txt
TESTS=(tests/test_equivalence.py tests/test_broadcast.py tests/test_metrics.py
       tests/test_checkpoint.py tests/test_auto.py)
TIMEOUT=${HVD_KERAS_COMPAT_TIMEOUT:-3600}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

log() { echo "[compat] $*"; }

# Every combination, in table order: "<tensorflow> <keras>".
mapfile -t ALL < <(awk '!/^#/ && NF >= 2 && !seen[$1 " " $2]++ { print $1, $2 }' tools/versions.txt)
name_of() { echo "$1-keras$2"; }

selected=()
if [ $# -eq 0 ]; then
  selected=("${ALL[@]}")
else
  for arg in "$@"; do
    found=0
    for combo in "${ALL[@]}"; do
      read -r tf keras <<<"$combo"
      if [ "$arg" = "$tf" ] || [ "$arg" = "$(name_of "$tf" "$keras")" ]; then
        selected+=("$combo"); found=1
      fi
    done
    if [ "$found" = 0 ]; then
      names=$(for c in "${ALL[@]}"; do name_of $c; done | tr '\n' ' ')
      echo "[compat] error: $arg is not a combination of tools/versions.txt. Received: $arg." \
           "HINT: use a TensorFlow version or one of: $names" >&2
      exit 2
    fi
  done
fi

mkdir -p "$OUT"
[ -f "$RESULTS" ] || printf '# combination\ttensorflow\tkeras\thorovod build\tcore tests\tdate\tcommit\n' > "$RESULTS"
# The code under test: the commit, "+changes" when the work tree differs from it.
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git status --porcelain -- hvd_keras tests 2>/dev/null)" ] && COMMIT="$COMMIT+changes"

# One line: the reason a bootstrap that exited non-zero gives in its log.
failure_reason() {
  local log_file=$1 line
  if grep -q '^\[build-horovod\] building' "$log_file" && ! grep -q '^\[build-horovod\] built' "$log_file"; then
    # the first compiler or linker error, its file named without directories
    line=$(grep -E ': (fatal )?error: |undefined reference|ld returned' "$log_file" \
           | head -1 | sed -E 's/^ *//; s|^[^ :]*/||')
    [ -z "$line" ] && line=$(grep -m1 -E 'CMake Error|^ERROR' "$log_file" | sed -E 's/^ *//')
    echo "failed: ${line:-see the log}"
  elif line=$(grep -m1 '^\[build-horovod\] error' "$log_file"); then
    echo "failed: ${line#\[build-horovod\] error: }"
  elif ! grep -q '^\[build-horovod\]' "$log_file"; then
    line=$(grep -E '^ERROR|^\[bootstrap\] error' "$log_file" | tail -1)
    echo "not built: install failed: ${line:-see the log}"
  else
    echo "ok; then bootstrap failed: $(grep -v '^ *$' "$log_file" | tail -1)"
  fi
}

# "<passed>/<total>" and what went wrong, from pytest's JUnit report.
summarize_tests() {
  python3 - "$1" <<'EOF'
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
cases = root.iter("testcase")
passed, total, failed, uncollected = 0, 0, [], []
for case in cases:
    bad = case.find("failure")
    if bad is None:
        bad = case.find("error")
    if bad is not None and bad.get("message") == "collection failure":
        uncollected.append(case.get("name").rsplit(".", 1)[-1] + ".py")
        continue
    total += 1
    if bad is not None:
        failed.append(case.get("name"))
    elif case.find("skipped") is None:
        passed += 1
text = f"{passed}/{total}"
if uncollected:
    text += f" ({', '.join(uncollected)} not collected)"
print(text)
for name in failed:
    print(name)
EOF
}

record() {  # name tf keras build tests
  local date line
  date=$(date -u +%Y-%m-%d)
  line=$(printf '%s\t%s\t%s\t%s\t%s\t%s\t%s' "$1" "$2" "$3" "$4" "$5" "$date" "$COMMIT")
  grep -v -P "^\Q$1\E\t" "$RESULTS" > "$RESULTS.tmp"
  echo "$line" >> "$RESULTS.tmp"
  mv "$RESULTS.tmp" "$RESULTS"
  log "$1: horovod build $4; core tests $5"
}

status=0
for combo in "${selected[@]}"; do
  read -r tf keras <<<"$combo"
  name=$(name_of "$tf" "$keras")
  venv=$OUT/$name
  log_file=$OUT/$name.log
  xml=$OUT/$name.xml
  rm -f "$xml"
  [ "${HVD_KERAS_COMPAT_FRESH:-0}" = 1 ] && rm -rf "$venv"
  log "$name: setting up $venv (log: $log_file; code: $COMMIT)"
  started=$SECONDS
  HVD_KERAS_DEVICE=cpu HVD_KERAS_TF=$tf HVD_KERAS_KERAS=$keras HVD_KERAS_VENV=$venv \
    bash tools/bootstrap.sh > "$log_file" 2>&1
  rc=$?
  echo "[compat] bootstrap exited $rc after $((SECONDS - started)) s" >> "$log_file"
  if [ "$rc" != 0 ]; then
    record "$name" "$tf" "$keras" "$(failure_reason "$log_file")" "not run"
    status=1
    continue
  fi
  if seconds=$(sed -n 's/^\[build-horovod\] built horovod .* in \([0-9]*\) s$/\1/p' "$log_file" | tail -1) \
     && [ -n "$seconds" ]; then
    build="ok (built in $seconds s)"
  elif grep -q '^\[build-horovod\] using the cached build' "$log_file"; then
    build="ok (cached build)"
  else
    build="ok (installed earlier)"
  fi

  # The import check: hvd_keras names the Keras internals it misses in one line.
  note=""
  if ! import_output=$("$venv/bin/python" -c "import hvd_keras; hvd_keras.init" 2>&1); then
    import_error=$(grep . <<<"$import_output" | tail -1)
    echo "[compat] import hvd_keras: $import_error" >> "$log_file"
    missing=$(sed -n 's/.*it lacks \(.*\)\. Supported:.*/\1/p' <<<"$import_error")
    note="import fails: ${missing:+lacks }${missing:-${import_error:0:150}}"
  fi

  log "$name: core tests"
  timeout --kill-after=60 "$TIMEOUT" "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    --continue-on-collection-errors --junitxml="$xml" "${TESTS[@]}" >> "$log_file" 2>&1
  rc=$?
  if [ -s "$xml" ]; then
    summary=$(summarize_tests "$xml")
    tests="$(head -1 <<<"$summary")"
    failed=$(tail -n +2 <<<"$summary")
    if [ -n "$failed" ]; then
      { echo "[compat] failed tests:"; echo "$failed"; } >> "$log_file"
    fi
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    tests="timed out after $TIMEOUT s"
  else
    tests="pytest exited $rc without a report"
  fi
  [ -n "$note" ] && tests="$tests; $note"
  [ "$rc" != 0 ] && status=1
  record "$name" "$tf" "$keras" "$build" "$tests"
done

# The table: every combination that has a result, in table order.
{
  echo "| TensorFlow | Keras | horovod build | core tests | date |"
  echo "| --- | --- | --- | --- | --- |"
  for combo in "${ALL[@]}"; do
    read -r tf keras <<<"$combo"
    grep -P "^\Q$(name_of "$tf" "$keras")\E\t" "$RESULTS" \
      | awk -F'\t' '{ for (i = 2; i <= 6; i++) gsub(/\|/, "\\|", $i)
                      printf "| %s | %s | %s | %s | %s |\n", $2, $3, $4, $5, $6 }'
  done
} > "$OUT/results.md"
echo
cat "$OUT/results.md"
[ "$status" = 0 ] || log "some combinations failed: the logs are $OUT/<combination>.log"
exit "$status"
