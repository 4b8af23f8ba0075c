#!/usr/bin/env bash
# A throwaway single-node SLURM cluster (SLURM 22.05 on Debian 12) for the project's tests.
#
#   bash scripts/slurm_cluster.sh install   # apt-get the packages (root only)
#   bash scripts/slurm_cluster.sh start     # munged, MariaDB, slurmdbd, slurmctld, slurmd
#   bash scripts/slurm_cluster.sh status    # exit 0 when `sinfo` answers and the node is up
#   bash scripts/slurm_cluster.sh stop      # cancel its jobs, stop its daemons by their recorded PIDs
#
# Everything lives under ${VITP_SLURM_STATE:-/tmp/vitp-slurm}: configs (etc/), logs (log/), PID files and
# sockets (run/), spool (spool/), the MariaDB datadir (mysql/). Nothing under /etc, /run or /var is used, so
# clients must be told where the configuration is:  export SLURM_CONF=$VITP_SLURM_STATE/etc/slurm.conf
# No systemd and no cgroups: processes are tracked through /proc (proctrack/linuxproc) and memory is
# watched by polling (jobacct_gather/linux with OverMemoryKill). VITP_SLURM_CGROUP=1 confines jobs with
# cgroup v1 instead (needs writable /sys/fs/cgroup/{memory,freezer}); only then does a job over its memory
# end OUT_OF_MEMORY rather than FAILED.
# shellcheck disable=SC2015  # `a && b || c` is meant: c when either fails
set -euo pipefail

STATE=${VITP_SLURM_STATE:-/tmp/vitp-slurm}
WAIT_S=${VITP_SLURM_WAIT_S:-60}
CLUSTER=vitp
PARTITION=debug
ETC=$STATE/etc
LOGS=$STATE/log
RUN=$STATE/run
SPOOL=$STATE/spool
DATADIR=$STATE/mysql
DB_SOCKET=$RUN/mariadb.sock
MUNGE_SOCKET=$RUN/munge.socket.2
CONF=$ETC/slurm.conf
CGROUP=${VITP_SLURM_CGROUP:-0}
CGROUP_DIRS=(memory freezer)  # the cgroup v1 controllers where slurmd makes slurm_<node>/
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
# Daemons in start order; stop goes in reverse. Each writes $RUN/<name>.pid.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
export PATH=$PATH:/usr/sbin:/sbin

say() { echo "slurm_cluster: $*"; }
die() { local code=$1; shift; echo "slurm_cluster: ERROR: $*" >&2; exit "$code"; }

usage() {
    echo "usage: $0 {install|start|stop|status}   (state dir: \$VITP_SLURM_STATE, now $STATE)" >&2
    exit 2
}

# --- PIDs --------------------------------------------------------------------------------------------------
# (A daemon removes its PID file as it exits, hence the quiet read.)
pid_of() { local f=$RUN/$1.pid; [[ -s $f ]] && tr -dc '0-9' 2>/dev/null <"$f" || true; }

# Whether the daemon recorded under `name` is alive and still is that program (not a recycled PID).
running() {
    local name=$1 pid
    pid=$(pid_of "$name")
    [[ -n $pid && -r /proc/$pid/comm ]] || return 1
    [[ $(cat "/proc/$pid/comm") == "$name" ]] || return 1
    [[ $(awk '{print $3}' "/proc/$pid/stat") != Z ]]
}

any_running() { local d; for d in "${DAEMONS[@]}"; do running "$d" && return 0; done; return 1; }

# Poll `cmd...` every 0.5 s until it succeeds or `secs` pass; returns its last status.
wait_until() {
    local secs=$1; shift
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || return 1
        sleep 0.5
    done
}

log_tail() {
    local f
    for f in "$LOGS"/*.log; do
        if [[ -f $f ]]; then echo "----- tail $f"; tail -n 20 "$f"; fi
    done >&2
}

fail_start() { log_tail; die 1 "$1 (logs above; state dir $STATE; stop with: $0 stop)"; }

# --- install -----------------------------------------------------------------------------------------------
cmd_install() {
    [[ $(id -u) -eq 0 ]] || die 3 "install needs root (apt-get); run: sudo bash $0 install"
    command -v apt-get >/dev/null \
        || die 3 "install needs apt-get (Debian/Ubuntu); install ${PACKAGES[*]} by other means"
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then say "already installed: ${PACKAGES[*]}"; return 0; fi
    say "installing ${missing[*]}"
    # The packages' own services must not start (they would take the default ports and sockets): a
    # policy-rc.d that denies them, only for the duration of the install and only if none exists.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    local status=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" || status=$?
    if ((status != 0)); then
        say "apt-get install failed; trying apt-get update first"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${missing[@]}" && status=0
    fi
    if ((made_policy)); then rm -f "$policy"; fi
    ((status == 0)) || die 3 "apt-get install ${missing[*]} failed (exit $status)"
    say "installed: ${PACKAGES[*]}"
}

# --- configuration -----------------------------------------------------------------------------------------
# How slurm.conf tracks processes and enforces --mem: by polling /proc, or with cgroup v1 on request.
memory_conf() {
    if [[ $CGROUP == 1 ]]; then
        printf '%s\n' "# Tasks confined by cgroup v1 (VITP_SLURM_CGROUP=1): a step over --mem ends" \
            "# OUT_OF_MEMORY." \
            ProctrackType=proctrack/cgroup TaskPlugin=task/cgroup JobAcctGatherType=jobacct_gather/linux \
            JobAcctGatherFrequency=task=2
    else
        printf '%s\n' "# No cgroups: processes tracked through /proc, tasks not confined. Memory is sampled" \
            "# every 2 s and a step above its limit is killed: the job ends FAILED (OUT_OF_MEMORY needs" \
            "# cgroups)." \
            ProctrackType=proctrack/linuxproc TaskPlugin=task/none JobAcctGatherType=jobacct_gather/linux \
            JobAcctGatherFrequency=task=2 JobAcctGatherParams=OverMemoryKill
    fi
}

write_cgroup_conf() {
    local c
    for c in "${CGROUP_DIRS[@]}"; do
        grep -q " /sys/fs/cgroup/$c cgroup " /proc/mounts && [[ -w /sys/fs/cgroup/$c ]] \
            || die 3 "VITP_SLURM_CGROUP=1 needs a writable cgroup v1 '$c' controller at /sys/fs/cgroup/$c"
    done
    printf '%s\n' CgroupPlugin=cgroup/v1 CgroupMountpoint=/sys/fs/cgroup ConstrainRAMSpace=yes \
        ConstrainSwapSpace=yes >"$ETC/cgroup.conf"
}

# The empty slurm_<node>/ cgroups slurmd leaves behind (cgroup mode only).
remove_cgroups() {
    local c d
    grep -q '^TaskPlugin=task/cgroup' "$CONF" 2>/dev/null || return 0
    for c in "${CGROUP_DIRS[@]}"; do
        d=/sys/fs/cgroup/$c/slurm_$(hostname -s)
        if [[ -d $d ]]; then find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
    done
}

write_slurm_conf() {
    local node
    node=$(slurmd -C | head -n 1)
    [[ $node == NodeName=* ]] || fail_start "'slurmd -C' printed no NodeName line: $node"
    cat >"$CONF.tmp" <<EOF
# Generated by scripts/slurm_cluster.sh: a throwaway single-node cluster for tests.
ClusterName=$CLUSTER
SlurmctldHost=$(hostname -s)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=15
StateSaveLocation=$SPOOL/slurmctld
SlurmdSpoolDir=$SPOOL/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
MpiDefault=none
MailProg=/bin/true
$(memory_conf)
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
# Connections to slurmdbd take their MUNGE socket from here, not from AuthInfo.
AccountingStoragePass=$MUNGE_SOCKET
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
# Short delays so that time-limit kills and finished jobs are handled in seconds.
KillWait=5
MinJobAge=10
InactiveLimit=0
ReturnToService=2
$node State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

write_slurmdbd_conf() {
    local pass=$1 f=$ETC/slurmdbd.conf
    (umask 077 && cat >"$f.tmp" <<EOF
# Generated by scripts/slurm_cluster.sh.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
SlurmUser=root
LogFile=$LOGS/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
EOF
    )
    chown root:root "$f.tmp"
    chmod 600 "$f.tmp"
    mv "$f.tmp" "$f"
}

# --- daemons -----------------------------------------------------------------------------------------------
start_munged() {
    running munged && return 0
    if [[ ! -s $ETC/munge.key ]]; then
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$ETC/munge.key"
        else
            (umask 077 && dd if=/dev/urandom of="$ETC/munge.key" bs=1024 count=1 status=none)
        fi
    fi
    chmod 600 "$ETC/munge.key"
    munged --force --socket="$MUNGE_SOCKET" --key-file="$ETC/munge.key" --pid-file="$RUN/munged.pid" \
        --log-file="$LOGS/munged.log" --seed-file="$STATE/munged.seed" </dev/null >/dev/null 2>&1 \
        || fail_start "munged did not start"
    wait_until 10 running munged || fail_start "munged did not record its PID"
}

db() { mariadb --no-defaults --socket="$DB_SOCKET" -u root "$@"; }

start_mariadb() {
    if ! running mariadbd; then
        if [[ ! -d $DATADIR/mysql ]]; then
            rm -rf "$DATADIR"
            mariadb-install-db --no-defaults --datadir="$DATADIR" --user=root --skip-test-db \
                --auth-root-authentication-method=socket >"$LOGS/mariadb-install.log" 2>&1 \
                || fail_start "mariadb-install-db failed (see $LOGS/mariadb-install.log)"
        fi
        # No TCP port: only the private socket. mariadbd does not fork; setsid detaches it from the caller.
        setsid mariadbd --no-defaults --datadir="$DATADIR" --socket="$DB_SOCKET" --skip-networking \
            --pid-file="$RUN/mariadbd.pid" --log-error="$LOGS/mariadb.log" --user=root \
            --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 \
            </dev/null >>"$LOGS/mariadb.log" 2>&1 &
    fi
    wait_until "$WAIT_S" mariadb-admin --no-defaults --socket="$DB_SOCKET" -u root ping \
        || fail_start "MariaDB did not answer on $DB_SOCKET"
    wait_until 10 running mariadbd || fail_start "mariadbd did not record its PID"
}

setup_accounting_db() {
    local pass=""
    # Keep the password of an earlier start: a running slurmdbd must be able to reconnect.
    [[ -s $ETC/slurmdbd.conf ]] && pass=$(sed -n 's/^StoragePass=//p' "$ETC/slurmdbd.conf")
    [[ -n $pass ]] || pass=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
    db -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
           CREATE USER IF NOT EXISTS 'slurm'@'localhost';
           ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pass';
           GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" \
        || fail_start "could not create the accounting database"
    write_slurmdbd_conf "$pass"
}

start_slurmdbd() {
    # slurmdbd.conf has no socket option: the MariaDB client library takes it from MYSQL_UNIX_PORT.
    running slurmdbd || MYSQL_UNIX_PORT=$DB_SOCKET slurmdbd </dev/null >/dev/null 2>&1 \
        || fail_start "slurmdbd did not start"
    # The first start creates the tables: `sacctmgr` answers once that is done.
    wait_until "$WAIT_S" sacctmgr -n show cluster || fail_start "slurmdbd did not answer sacctmgr"
    running slurmdbd || fail_start "slurmdbd did not record its PID"
    if [[ -z $(sacctmgr -n -P show cluster "$CLUSTER" format=cluster) ]]; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail_start "sacctmgr add cluster $CLUSTER failed"
    fi
    if [[ -z $(sacctmgr -n -P show assoc cluster="$CLUSTER" user=root format=user) ]]; then
        sacctmgr -i add user root account=root cluster="$CLUSTER" >/dev/null \
            || fail_start "sacctmgr add user root failed"
    fi
}

node_idle() { sinfo -h -N -p "$PARTITION" -o %T | grep -Eq '^(idle|mixed|allocated)'; }

start_slurm() {
    running slurmctld || slurmctld </dev/null >/dev/null 2>&1 || fail_start "slurmctld did not start"
    wait_until "$WAIT_S" scontrol ping || fail_start "slurmctld did not answer scontrol ping"
    running slurmd || slurmd </dev/null >/dev/null 2>&1 || fail_start "slurmd did not start"
    wait_until "$WAIT_S" node_idle || fail_start "node $(hostname -s) not idle in sinfo after ${WAIT_S}s"
    wait_until "$WAIT_S" sacct -n -X || fail_start "sacct did not answer after ${WAIT_S}s"
    running slurmctld && running slurmd || fail_start "slurmctld or slurmd did not record its PID"
}

# Whether a cluster other than ours answers `sinfo` with the caller's configuration.
foreign_cluster() {
    local env=()
    [[ ${SLURM_CONF:-} == "$CONF" ]] && env=(-u SLURM_CONF)
    command -v sinfo >/dev/null && env "${env[@]}" timeout 10 sinfo -h >/dev/null 2>&1
}

cmd_start() {
    local t0=$SECONDS
    command -v slurmctld >/dev/null && command -v mariadbd >/dev/null && command -v munged >/dev/null \
        || die 3 "SLURM, MariaDB or munge is not installed; run: sudo bash $0 install"
    if ! any_running && foreign_cluster; then
        die 4 "a SLURM cluster already answers 'sinfo' here; not touching it (use it, or stop it first)"
    fi
    if cmd_status >/dev/null 2>&1; then say "already up (SLURM_CONF=$CONF)"; return 0; fi
    mkdir -p "$ETC" "$LOGS" "$RUN" "$SPOOL/slurmctld" "$SPOOL/slurmd"
    chmod 755 "$STATE" "$ETC" "$RUN"
    if [[ $CGROUP == 1 ]]; then write_cgroup_conf; else rm -f "$ETC/cgroup.conf"; fi
    export SLURM_CONF=$CONF
    say "starting in $STATE"
    start_munged
    start_mariadb
    setup_accounting_db
    write_slurm_conf
    start_slurmdbd
    start_slurm
    say "up in $((SECONDS - t0)) s: node $(hostname -s), partition $PARTITION, cluster $CLUSTER"
    say "PIDs: $(for d in "${DAEMONS[@]}"; do printf '%s=%s ' "$d" "$(pid_of "$d")"; done)"
    say "use it with: export SLURM_CONF=$CONF"
}

# TERM the recorded PID, wait up to 20 s, then KILL.
stop_daemon() {
    local name=$1 pid i
    if ! running "$name"; then rm -f "$RUN/$name.pid"; return 0; fi
    pid=$(pid_of "$name")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do running "$name" || break; sleep 0.5; done
    if running "$name"; then
        say "$name ($pid) ignored TERM; sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    for ((i = 0; i < 20; i++)); do running "$name" || break; sleep 0.25; done
    if running "$name"; then die 1 "$name ($pid) is still running"; fi
    say "stopped $name ($pid)"
    rm -f "$RUN/$name.pid"
}

cmd_stop() {
    [[ -d $STATE ]] || { say "nothing to stop (no $STATE)"; return 0; }
    export SLURM_CONF=$CONF
    # A job's processes belong to its slurmstepd, not to the daemons: cancel the jobs first, so that none
    # outlives the cluster.
    local jobs
    if running slurmctld; then
        jobs=$(squeue -h -t PENDING,RUNNING,SUSPENDED -o %A 2>/dev/null | sort -u | tr '\n' ' ' || true)
        if [[ -n ${jobs// /} ]]; then
            say "cancelling the cluster's jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
        fi
        # Also wait for jobs still completing. (The inner bash expands the command, at each try.)
        # shellcheck disable=SC2016
        wait_until 30 bash -c '[[ -z $(squeue -h -o %A) ]]' || say "some jobs did not end within 30 s"
    fi
    local i
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do stop_daemon "${DAEMONS[i]}"; done
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock" "$DB_SOCKET"
    remove_cgroups
    say "stopped (configs, logs, spool and the database stay in $STATE)"
}

cmd_status() {
    export SLURM_CONF=$CONF
    local d
    for d in "${DAEMONS[@]}"; do running "$d" || { say "$d is not running"; return 1; }; done
    timeout 10 sinfo -h >/dev/null 2>&1 || { say "sinfo does not answer"; return 1; }
    node_idle || { say "node $(hostname -s) is not up: $(sinfo -h -N -o '%T %E')"; return 1; }
    say "up: $(sinfo -h -N -o '%N %T %c CPUs %m MB') (SLURM_CONF=$CONF)"
}

(($# == 1)) || usage
case $1 in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) usage ;;
esac
