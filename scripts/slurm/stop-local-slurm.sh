#!/usr/bin/env bash
# Stop the daemons that start-local-slurm.sh started, by its pid files, and nothing else.
set -uo pipefail

dir="${HYPERP_SLURM_DIR:-/tmp/hyperp-slurm}"

stop() {  # stop PIDFILE NAME: TERM the process the pid file names, if it is still NAME
    local pid
    pid="$(cat "$1" 2>/dev/null)" || return 0
    [[ -n "$pid" && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        [[ -d "/proc/$pid" ]] || return 0
        sleep 0.2
    done
    echo "stop-local-slurm: $2 ($pid) did not stop on SIGTERM; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

stop "$dir/slurmd.pid" slurmd
stop "$dir/slurmctld.pid" slurmctld
stop "$dir/munged.pid" munged
