#!/bin/bash
# timeit.sh RUNS CMD... - run CMD RUNS times as a whole process (fork+exec, as pacemaker-execd
# does) and print one line per run: "<label> <microseconds> <exit code>". The timer is bash's
# $EPOCHREALTIME, so no extra fork sits inside the measured interval; CMD's output is dropped.
#   TIMEIT_ACTIONS="stop start": each run executes "CMD... stop" then "CMD... start", labelled so
#   TIMEIT_BETWEEN="cmd args": run (untimed, output dropped) before every timed run
RUNS=$1; shift
read -r -a actions <<<"${TIMEIT_ACTIONS:-}"
[ ${#actions[@]} -gt 0 ] || actions=("")
read -r -a between <<<"${TIMEIT_BETWEEN:-}"
for ((i = 0; i < RUNS; i++)); do
    for a in "${actions[@]}"; do
        [ ${#between[@]} -gt 0 ] && "${between[@]}" >/dev/null 2>&1
        t0=${EPOCHREALTIME/./}
        if [ -n "$a" ]; then "$@" "$a"; else "$@"; fi >/dev/null 2>>"${TIMEIT_STDERR:-/dev/null}"
        rc=$?
        t1=${EPOCHREALTIME/./}
        echo "${a:-run} $((t1 - t0)) $rc"
    done
done
