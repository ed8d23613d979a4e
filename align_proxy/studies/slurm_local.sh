#!/usr/bin/env bash
# A single-node Slurm on this machine, for trying `align-proxy study --executor slurm` (and for CI):
#   align-proxy slurm-local start    # or: bash align_proxy/studies/slurm_local.sh start
#   align-proxy slurm-local stop
# Needs root and Debian's packages: apt-get install -y slurm-wlm munge. It writes /etc/slurm/slurm.conf
# (refusing to replace one it did not write), starts munged (as the munge user), slurmctld and slurmd, and
# waits until the node takes jobs. Accounting is off (no slurmdbd), so `sacct` fails: the study reads job
# states from squeue and the cell directories instead.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by align-proxy slurm_local.sh"
STATE=/var/lib/align-proxy-slurm

die() { echo "slurm_local.sh: $*" >&2; exit 1; }

write_conf() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc)
    # Below the memory free now, so slurmd never finds less than configured and drains the node.
    mem_mb=$(( $(awk '/^MemAvailable:/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script: this machine has its own Slurm; use that"
    fi
    mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d" /var/log/slurm
    cat > "$CONF.tmp" <<EOF
$MARK (single node: $host, $cpus CPUs, ${mem_mb} MB)
ClusterName=align-proxy
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# Containers: no cgroup plugins, processes tracked by parentage.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
# The node as configured here, whatever slurmd counts (a container may see more cores than it may use).
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# How long an ended job stays visible to squeue/scontrol (its final state: TIMEOUT, CANCELLED, ...).
MinJobAge=600
# A job that names no --mem gets its share per core, not the whole node (which would run one job at a time).
DefMemPerCPU=$(( mem_mb / cpus ))
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

node_ready() {
    sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'
}

start() {
    [ "$(id -u)" -eq 0 ] || die "run as root (it writes $CONF and starts the Slurm daemons)"
    for tool in munged slurmctld slurmd sinfo; do
        command -v "$tool" >/dev/null || die "$tool not found: apt-get install -y slurm-wlm munge"
    done
    if node_ready; then echo "slurm: already running ($(sinfo -h -o '%n %c CPUs %m MB' | head -1))"; return; fi
    write_conf
    if [ ! -s /etc/munge/munge.key ]; then mungekey --create --keyfile /etc/munge/munge.key; fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
    if ! munge -n >/dev/null 2>&1; then runuser -u munge -- /usr/sbin/munged; fi
    [ -f /run/slurmctld.pid ] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null || slurmctld
    [ -f /run/slurmd.pid ] && kill -0 "$(cat /run/slurmd.pid)" 2>/dev/null || slurmd
    for _ in $(seq 120); do  # up to 60 s: the daemons register within a few seconds
        if node_ready; then echo "slurm: running ($(sinfo -h -o '%n %c CPUs %m MB, partition %P' | head -1))"; return; fi
        sleep 0.5
    done
    die "the node did not come up; see /var/log/slurm/slurmctld.log and slurmd.log ($(sinfo -h -o '%t %E' 2>&1 | head -1))"
}

stop() {
    scontrol shutdown >/dev/null 2>&1 || true  # stops slurmctld and slurmd, each saving its state
    for pidfile in /run/slurmctld.pid /run/slurmd.pid /run/munge/munged.pid; do
        if [ -f "$pidfile" ]; then
            pid=$(cat "$pidfile")
            for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
            kill "$pid" 2>/dev/null || true
        fi
    done
    echo "slurm: stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) node_ready && sinfo || { echo "slurm: not running"; exit 1; } ;;
    *) die "usage: $0 start|stop|status" ;;
esac
