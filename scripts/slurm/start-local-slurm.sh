#!/usr/bin/env bash
# A one-node SLURM on this machine, for tests and CI (not for production use).
#
# Installs slurm-wlm and munge from Debian when they are missing (as root), writes a localhost
# slurm.conf with this node's real CPU count and memory (select/cons_tres, no accounting), starts
# munged, slurmctld and slurmd with pid files in its own directory, waits until `srun hostname`
# works, and prints the line to source:   export SLURM_CONF=<dir>/slurm.conf
# It uses its own munge socket and ports, so it does not disturb a SLURM already on the machine.
# scripts/slurm/stop-local-slurm.sh stops what this script started (by those pid files only).
#
# Environment: HYPERP_SLURM_DIR (default /tmp/hyperp-slurm), HYPERP_SLURM_PORT (default 16817;
# slurmd uses the next port). Exit status 3: SLURM cannot be had here (the reason is printed).
set -euo pipefail

dir="${HYPERP_SLURM_DIR:-/tmp/hyperp-slurm}"
port="${HYPERP_SLURM_PORT:-16817}"
conf="$dir/slurm.conf"
say() { echo "start-local-slurm: $*" >&2; }
cannot() { say "$*"; exit 3; }

alive() {  # alive PIDFILE NAME: the pid file names a live process whose command is NAME
    local pid
    pid="$(cat "$1" 2>/dev/null)" || return 1
    [[ -n "$pid" && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]]
}

cluster_works() {
    SLURM_CONF="$conf" timeout 20 srun --quiet --time=1 hostname >/dev/null 2>&1
}

if alive "$dir/slurmctld.pid" slurmctld && alive "$dir/slurmd.pid" slurmd && cluster_works; then
    say "already running ($conf)"
    echo "export SLURM_CONF=$conf"
    exit 0
fi

missing=()
for command in munged slurmctld slurmd srun sbatch squeue scontrol scancel; do
    command -v "$command" >/dev/null || missing+=("$command")
done
if ((${#missing[@]})); then
    [[ "$(id -u)" == 0 ]] || cannot "not root, and ${missing[*]} missing: install slurm-wlm and munge (as root)"
    command -v apt-get >/dev/null || cannot "${missing[*]} missing and no apt-get: install slurm-wlm and munge"
    say "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null 2>&1; then
        apt-get update -qq >/dev/null 2>&1 || cannot "apt-get update failed"
        apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null \
            || cannot "apt-get install slurm-wlm munge failed"
    fi
fi
[[ "$(id -u)" == 0 ]] || cannot "not root: slurmd must run as root to start jobs as their users"

# A fresh cluster: stop anything an earlier start left, then clear its state.
bash "$(dirname "$0")/stop-local-slurm.sh" >/dev/null 2>&1 || true
rm -rf "$dir"
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
chmod 700 "$dir/munge"

# munge: a private key and socket (a system munged, if any, keeps its own).
head -c 1024 /dev/urandom >"$dir/munge/munge.key"
chmod 600 "$dir/munge/munge.key"
munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/seed"

# The node as slurmd sees it (real CPU count and memory).
node_line="$(slurmd -C | head -n 1)"
node="$(sed -n 's/.*NodeName=\([^ ]*\).*/\1/p' <<<"$node_line")"
cpus="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node_line")"
memory="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")"
[[ -n "$node" && -n "$cpus" && -n "$memory" ]] || cannot "could not read the node from 'slurmd -C': $node_line"

cat >"$conf" <<CONF
ClusterName=hyperp-local
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire seconds before it starts again (default 120).
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=5
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Schedule every 2 s, so a requeued job that becomes eligible starts at once.
SchedulerParameters=sched_interval=2,bf_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
KillWait=30
MinJobAge=300
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF

export SLURM_CONF="$conf"
slurmctld -f "$conf"
slurmd -f "$conf"
for _ in $(seq 60); do
    cluster_works && break
    sleep 1
done
cluster_works || cannot "srun hostname does not work after 60 s; see $dir/slurmctld.log and $dir/slurmd.log"
say "running: 1 node ($node, $cpus CPUs, $memory MB), logs in $dir"
echo "export SLURM_CONF=$conf"
