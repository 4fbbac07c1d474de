#!/bin/bash
# timeit.sh RUNS CMD... - run CMD RUNS times as a whole process (fork+exec, as pacemaker-execd
# does) and print one line per run: "<label> <wall us> <exit code> <cpu us>". The wall timer is
# bash's $EPOCHREALTIME, so no extra fork sits inside the measured interval; cpu is the user+system
# time of CMD and everything it forked (the `times` builtin, ms resolution), which other load on
# the machine disturbs much less than wall time. CMD's output is dropped.
#   TIMEIT_ACTIONS="stop start": each run executes "CMD... stop" then "CMD... start", labelled so
#   TIMEIT_BETWEEN="cmd args": run (untimed, output dropped) before every timed run
RUNS=$1; shift
read -r -a actions <<<"${TIMEIT_ACTIONS:-}"
[ ${#actions[@]} -gt 0 ] || actions=("")
read -r -a between <<<"${TIMEIT_BETWEEN:-}"
TF=${TMPDIR:-/tmp}/timeit.$$
children_cpu() {  # sets CPU to the user+system microseconds of all reaped children so far
    local u s x m sec frac total=0
    times >"$TF"
    { read -r _ _; read -r u s; } <"$TF"
    for x in "$u" "$s"; do
        m=${x%%m*}; x=${x#*m}; x=${x%s}; sec=${x%.*}; frac=${x#*.}
        total=$((total + (m * 60 + sec) * 1000000 + 10#$frac * 1000))
    done
    CPU=$total
}
for ((i = 0; i < RUNS; i++)); do
    for a in "${actions[@]}"; do
        [ ${#between[@]} -gt 0 ] && "${between[@]}" >/dev/null 2>&1
        children_cpu; c0=$CPU
        t0=${EPOCHREALTIME/./}
        if [ -n "$a" ]; then "$@" "$a"; else "$@"; fi >/dev/null 2>>"${TIMEIT_STDERR:-/dev/null}"
        rc=$?
        t1=${EPOCHREALTIME/./}
        children_cpu
        echo "${a:-run} $((t1 - t0)) $rc $((CPU - c0))"
    done
done
rm -f "$TF"
