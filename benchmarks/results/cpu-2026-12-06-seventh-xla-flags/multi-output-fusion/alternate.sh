#!/bin/bash
# usage: alternate.sh SUITE CASES STEPS ROUNDS OUTLOG "XLA_FLAGS of B"
# Takes turns: one process with zoo's XLA options (A), one with the flags added (B), ROUNDS times.
here=$(dirname "$0")
suite=$1; cases=$2; steps=$3; rounds=$4; log=$5; flagsb=$6
: > "$log"
for r in $(seq "$rounds"); do
  echo "A $(XLA_FLAGS= python "$here/one_process.py" "$suite" "$cases" "$steps" 2>/dev/null | grep RESULT)" >> "$log"
  echo "B $(XLA_FLAGS="$flagsb" python "$here/one_process.py" "$suite" "$cases" "$steps" 2>/dev/null | grep RESULT)" >> "$log"
done
