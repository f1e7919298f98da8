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
# slurmd uses the next ports), HYPERP_SLURM_NODES (default 1: the machine is one node; N > 1
# splits its CPUs and memory into N nodes, one slurmd each, to try multi-node jobs). Exit
# status 3: SLURM cannot be had here (the reason is printed).
set -euo pipefail

dir="${HYPERP_SLURM_DIR:-/tmp/hyperp-slurm}"
port="${HYPERP_SLURM_PORT:-16817}"
nodes="${HYPERP_SLURM_NODES:-1}"
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

slurmds_alive() {
    local pidfile
    for pidfile in "$dir"/slurmd*.pid; do alive "$pidfile" slurmd || return 1; done
}

if alive "$dir/slurmctld.pid" slurmctld && slurmds_alive && cluster_works; then
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
mkdir -p "$dir/state" "$dir/munge"
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

if ((nodes == 1)); then
    names="$node"
    node_lines="NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN"
else  # several slurmd on this host, each its own node with its own port
    ((cpus >= nodes)) || cannot "$cpus CPUs cannot make $nodes nodes"
    names="" node_lines=""
    for ((index = 1; index <= nodes; index++)); do
        names+="${names:+,}$node-$index"
        node_lines+="NodeName=$node-$index NodeHostname=$node NodeAddr=127.0.0.1 Port=$((port + 1 + index))"
        node_lines+=" CPUs=$((cpus / nodes)) RealMemory=$((memory / nodes)) State=UNKNOWN"$'\n'
    done
fi

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
SlurmdSpoolDir=$dir/spool-%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd-%n.log
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
$node_lines
PartitionName=debug Nodes=$names Default=YES MaxTime=INFINITE State=UP
CONF

export SLURM_CONF="$conf"
slurmctld -f "$conf"
for name in ${names//,/ }; do
    mkdir -p "$dir/spool-$name"
    if ((nodes == 1)); then slurmd -f "$conf"; else slurmd -f "$conf" -N "$name"; fi
done
for _ in $(seq 60); do
    cluster_works && break
    sleep 1
done
cluster_works || cannot "srun hostname does not work after 60 s; see the logs in $dir"
say "running: $nodes node(s) ($names; $cpus CPUs, $memory MB in all), logs in $dir"
echo "export SLURM_CONF=$conf"
