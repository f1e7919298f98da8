#!/usr/bin/env bash
# Stop the daemons that start-local-slurm.sh started, by its pid files, and nothing else; its
# jobs are cancelled first, so that no job step outlives the daemons that run it.
set -uo pipefail

dir="${HYPERP_SLURM_DIR:-/tmp/hyperp-slurm}"

running() {  # running PID: alive and not a zombie (nobody may be there to reap it)
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)"
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

stop() {  # stop PIDFILE NAME: TERM the process the pid file names, if it is still NAME
    local pid
    pid="$(cat "$1" 2>/dev/null)" || return 0
    [[ -n "$pid" && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        running "$pid" || return 0
        sleep 0.2
    done
    echo "stop-local-slurm: $2 ($pid) did not stop on SIGTERM; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

pid="$(cat "$dir/slurmctld.pid" 2>/dev/null)"
if [[ -n "$pid" && "$(cat "/proc/$pid/comm" 2>/dev/null)" == slurmctld ]]; then
    export SLURM_CONF="$dir/slurm.conf"
    jobs="$(timeout 20 squeue --noheader --format=%A 2>/dev/null | sort -u)"
    if [[ -n "$jobs" ]]; then
        # shellcheck disable=SC2086  # one argument per job id
        timeout 20 scancel $jobs 2>/dev/null
        for _ in $(seq 80); do  # SIGTERM, then SLURM's KillWait (30 s) before SIGKILL
            [[ -z "$(timeout 20 squeue --noheader --format=%A 2>/dev/null)" ]] && break
            sleep 0.5
        done
    fi
fi

for pidfile in "$dir"/slurmd-*.pid; do
    stop "$pidfile" slurmd
done
stop "$dir/slurmctld.pid" slurmctld
stop "$dir/munged.pid" munged
