#!/usr/bin/env bash
# Local dev cluster on ONE Debian machine, as root: a real SLURM (slurmctld + slurmd + slurmdbd with
# MariaDB accounting) and a real PostgreSQL 15, so that the SLURM/PostgreSQL tests and a small
# multirun exercise the same code paths as a production cluster. No systemd is assumed: every daemon
# is started directly and tracked by its pid file.
#
#   bash slurm/dev-cluster.sh up       # install what is missing, start everything (idempotent)
#   bash slurm/dev-cluster.sh status   # what runs; exits 1 when something is down (run as root)
#   bash slurm/dev-cluster.sh down     # stop what `up` started; packages and data are kept
#
# State (configs, pid files, logs, spools, the MariaDB data, passwords) lives in
# CNAS_DEV_CLUSTER_DIR (default /var/lib/cnas-dev-cluster). /etc/slurm/slurm.conf becomes a symlink
# to the generated slurm.conf so sbatch/squeue/srun/sacct and submitit work from any shell.
# See slurm/README.md for the partitions, preemption and how to release requeued jobs.
set -euo pipefail

STATE_DIR="${CNAS_DEV_CLUSTER_DIR:-/var/lib/cnas-dev-cluster}"
CLUSTER_NAME="cnasdev"
PG_VERSION="${CNAS_PG_VERSION:-15}"
PG_CLUSTER="main"
PG_PORT=5432
PG_ROLE="cnas"
PG_DB="cnas"
# A private MariaDB (own data dir, socket and port) so a system MariaDB, if any, is left alone.
MYSQL_PORT="${CNAS_DEV_MYSQL_PORT:-3307}"
STORAGE_URL="postgresql+psycopg2://${PG_ROLE}@127.0.0.1:${PG_PORT}/${PG_DB}"
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd slurm-wlm-mysql-plugin mariadb-server
  mariadb-client postgresql postgresql-client)
# 16 one-CPU jobs plus 4 two-task jobs need 24 CPU slots on 2 cores: 12 jobs per core; 16 leaves room.
OVERSUBSCRIBE=16
WAIT_S=60

ETC="$STATE_DIR/etc"
RUN="$STATE_DIR/run"
LOG="$STATE_DIR/log"
SPOOL="$STATE_DIR/spool"
MYSQL_DIR="$STATE_DIR/mysql"
MYSQL_SOCK="$MYSQL_DIR/run/mysqld.sock"
MYSQL_PID="$MYSQL_DIR/run/mariadbd.pid"
SLURM_CONF_FILE="$ETC/slurm.conf"
HOST="$(hostname -s)"
SLURM_CONF_CHANGED=0

log() { printf '[dev-cluster] %s\n' "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

# Print the last lines of a log file to stderr (used before giving up on a daemon).
tail_log() {
  local file="$1"
  if [[ -f "$file" ]]; then
    log "last lines of $file:"
    tail -n 25 "$file" >&2 || true
  fi
}

# True when the pid in pid file $1 is alive and runs command $2 (guards against recycled pids).
pid_alive() {
  local pidfile="$1" comm="$2" pid
  [[ -s "$pidfile" ]] || return 1
  pid="$(tr -d '[:space:]' <"$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/comm" ]] || return 1
  [[ "$(cat "/proc/$pid/comm")" == "$comm" ]]
}

# Poll command "$@" every 0.5 s for up to $WAIT_S seconds; non-zero if it never succeeded.
wait_for() {
  local deadline=$((SECONDS + WAIT_S))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# SIGTERM the daemon of pid file $1 (command $2) and wait for it to exit; SIGKILL after 30 s.
stop_pid() {
  local pidfile="$1" comm="$2" pid i
  if ! pid_alive "$pidfile" "$comm"; then
    rm -f "$pidfile"
    return 0
  fi
  pid="$(tr -d '[:space:]' <"$pidfile")"
  log "stopping $comm (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 60; i++)); do
    [[ -d "/proc/$pid" ]] || break
    sleep 0.5
  done
  if [[ -d "/proc/$pid" ]]; then
    log "$comm did not stop in 30 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# ---------------------------------------------------------------------------------------- packages
install_packages() {
  local missing=() pkg added_policy=0
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0
  [[ "$(id -u)" == 0 ]] || die "missing packages (${missing[*]}) and not root"
  log "installing ${missing[*]}"
  # Debian's maintainer scripts would start the daemons with the distribution's configs; this
  # script starts its own, so forbid that (the usual Docker policy-rc.d), unless a policy exists.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    added_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
    >"/tmp/cnas-dev-cluster-apt.log" 2>&1; then
    ((added_policy)) && rm -f /usr/sbin/policy-rc.d
    tail_log /tmp/cnas-dev-cluster-apt.log
    die "apt-get install failed"
  fi
  ((added_policy)) && rm -f /usr/sbin/policy-rc.d
  return 0
}

# ------------------------------------------------------------------------------------------- munge
start_munge() {
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    install -d -o munge -g munge -m 0700 /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  if pid_alive /run/munge/munged.pid munged; then
    return 0
  fi
  log "starting munged as user munge"
  runuser -u munge -- /usr/sbin/munged
  wait_for bash -c 'munge -n | unmunge' || {
    tail_log /var/log/munge/munged.log
    die "munged does not answer"
  }
  touch "$RUN/munged.started-here"
}

# ------------------------------------------------------------------------------------- config files
secret() {
  local file="$1"
  if [[ ! -s "$file" ]]; then
    (umask 077 && od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$file")
  fi
  chmod 0600 "$file"
  cat "$file"
}

write_slurm_conf() {
  local spec cpus boards sockets cores threads mem real_mem
  spec="$(slurmd -C | head -n 1)"
  field() { sed -n "s/.*\\b$1=\\([0-9]*\\).*/\\1/p" <<<"$spec"; }
  cpus="$(field CPUs)" boards="$(field Boards)" sockets="$(field SocketsPerBoard)"
  cores="$(field CoresPerSocket)" threads="$(field ThreadsPerCore)" mem="$(field RealMemory)"
  [[ -n "$cpus" && -n "$mem" ]] || die "cannot parse 'slurmd -C': $spec"
  # Below the detected size: slurmd drains a node whose configured memory exceeds what it finds,
  # and the kernel/page cache need some. 5 % or at least 512 MB.
  real_mem=$((mem - (mem / 20 > 512 ? mem / 20 : 512)))

  cat >"$SLURM_CONF_FILE.tmp" <<EOF
# Generated by slurm/dev-cluster.sh; edits are overwritten by the next 'up'.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
MailProg=/bin/true
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
StateSaveLocation=$SPOOL/slurmctld
SlurmdSpoolDir=$SPOOL/slurmd
SlurmctldPort=6817
SlurmdPort=6818
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
# Preemption: a job in 'high' takes the cores of 'debug' jobs; those get their --signal (USR2 for
# submitit) at once, are killed GraceTime seconds later and requeued (held ~120 s in BeginTime).
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
JobRequeue=1
# Short: scancel/timeouts send SIGKILL this long after SIGTERM; keeps the tests quick.
KillWait=5
InactiveLimit=0
# Accounting through slurmdbd (MariaDB): sacct knows every job, also those gone from squeue,
# which is what submitit polls to see a killed job end.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus Boards=${boards:-1} SocketsPerBoard=${sockets:-1} CoresPerSocket=${cores:-$cpus} ThreadsPerCore=${threads:-1} RealMemory=$real_mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=7-00:00:00 OverSubscribe=FORCE:$OVERSUBSCRIBE PriorityTier=1 GraceTime=10 State=UP
# 'high' must NOT oversubscribe: a FORCE-sharing high job simply shares the cores of the debug
# jobs and preempts nothing (seen with Slurm 22.05). OverSubscribe=NO makes it claim whole cores,
# which preempts the debug jobs on them.
PartitionName=high Nodes=$HOST Default=NO MaxTime=7-00:00:00 OverSubscribe=NO PriorityTier=10 PreemptMode=OFF State=UP
EOF
  if cmp -s "$SLURM_CONF_FILE.tmp" "$SLURM_CONF_FILE"; then
    rm -f "$SLURM_CONF_FILE.tmp"
  else
    mv "$SLURM_CONF_FILE.tmp" "$SLURM_CONF_FILE"
    SLURM_CONF_CHANGED=1
  fi
  chmod 0644 "$SLURM_CONF_FILE"

  install -d -m 0755 /etc/slurm
  if [[ -e /etc/slurm/slurm.conf && ! -L /etc/slurm/slurm.conf ]]; then
    log "keeping the existing /etc/slurm/slurm.conf as /etc/slurm/slurm.conf.before-cnas"
    mv /etc/slurm/slurm.conf /etc/slurm/slurm.conf.before-cnas
  fi
  ln -sfn "$SLURM_CONF_FILE" /etc/slurm/slurm.conf
}

write_slurmdbd_conf() {
  local pw="$1"
  (
    umask 077
    cat >"$ETC/slurmdbd.conf" <<EOF
# Generated by slurm/dev-cluster.sh; slurmdbd wants it 0600 and owned by SlurmUser.
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=$pw
StorageLoc=slurm_acct_db
EOF
  )
  chmod 0600 "$ETC/slurmdbd.conf"
}

# ----------------------------------------------------------------------------------------- MariaDB
mysql_root() { mariadb --no-defaults --socket="$MYSQL_SOCK" -uroot "$@"; }

start_mariadb() {
  local pw="$1"
  install -d -m 0755 "$MYSQL_DIR"
  install -d -o mysql -g mysql -m 0750 "$MYSQL_DIR/data" "$MYSQL_DIR/run"
  cat >"$MYSQL_DIR/my.cnf" <<EOF
[mysqld]
user=mysql
datadir=$MYSQL_DIR/data
socket=$MYSQL_SOCK
pid-file=$MYSQL_PID
bind-address=127.0.0.1
port=$MYSQL_PORT
log-error=$MYSQL_DIR/run/mariadbd.log
skip-name-resolve
# Small: a dev machine; the lock timeout is what slurmdbd asks for.
innodb_buffer_pool_size=64M
innodb_lock_wait_timeout=900
EOF
  if [[ ! -d "$MYSQL_DIR/data/mysql" ]]; then
    log "initialising MariaDB data in $MYSQL_DIR/data"
    mariadb-install-db --defaults-file="$MYSQL_DIR/my.cnf" --auth-root-authentication-method=socket \
      --skip-test-db >"$LOG/mariadb-install.log" 2>&1 || {
      tail_log "$LOG/mariadb-install.log"
      die "mariadb-install-db failed"
    }
  fi
  if ! pid_alive "$MYSQL_PID" mariadbd; then
    log "starting mariadbd (user mysql, 127.0.0.1:$MYSQL_PORT)"
    setsid /usr/sbin/mariadbd --defaults-file="$MYSQL_DIR/my.cnf" </dev/null \
      >>"$LOG/mariadbd.out" 2>&1 &
    wait_for mysql_root -e 'SELECT 1' || {
      tail_log "$MYSQL_DIR/run/mariadbd.log"
      die "MariaDB did not start"
    }
  fi
  # Idempotent: (re)sets the password to the one in the state dir.
  mysql_root <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pw';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pw';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

# ------------------------------------------------------------------------------------------- SLURM
start_slurm() {
  export SLURM_CONF="$SLURM_CONF_FILE"
  if ! pid_alive "$RUN/slurmdbd.pid" slurmdbd; then
    log "starting slurmdbd"
    slurmdbd
    wait_for sacctmgr -n list cluster || {
      tail_log "$LOG/slurmdbd.log"
      die "slurmdbd does not answer"
    }
  fi
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER_NAME"; then
    sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null
  fi
  if pid_alive "$RUN/slurmctld.pid" slurmctld; then
    if ((SLURM_CONF_CHANGED)); then
      # Pick up the regenerated slurm.conf without losing the queue.
      log "slurm.conf changed: scontrol reconfigure"
      scontrol reconfigure >/dev/null
    fi
  else
    log "starting slurmctld"
    slurmctld
  fi
  wait_for scontrol ping || {
    tail_log "$LOG/slurmctld.log"
    die "slurmctld does not answer"
  }
  if ! pid_alive "$RUN/slurmd.pid" slurmd; then
    log "starting slurmd"
    slurmd
  fi
  local state deadline=$((SECONDS + WAIT_S)) resumed=0
  while :; do
    state="$(sinfo -h -N -n "$HOST" -o '%t' 2>/dev/null | head -n 1)"
    case "$state" in
      idle* | mix* | alloc* | comp*) [[ "$state" != *'*' ]] && break ;;
      drain* | drng | down* | fail*)
        if ((!resumed)); then
          # A node left drained/down by an earlier run (e.g. killed slurmd): bring it back once.
          scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
          resumed=1
        fi
        ;;
    esac
    if ((SECONDS >= deadline)); then
      tail_log "$LOG/slurmd.log"
      tail_log "$LOG/slurmctld.log"
      die "node $HOST not idle after ${WAIT_S}s (state '${state:-?}'): $(scontrol show node "$HOST" 2>&1 | grep -i reason || true)"
    fi
    sleep 0.5
  done
  # slurmctld registers with slurmdbd asynchronously; sacct must work before submitit polls it.
  wait_for sacct -n -X -S now || {
    tail_log "$LOG/slurmctld.log"
    die "sacct does not work"
  }
}

# -------------------------------------------------------------------------------------- PostgreSQL
pg_running() { pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" \
  '$1 == v && $2 == c && $4 == "online" {ok = 1} END {exit !ok}'; }
pg_sql() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -At "$@"; }

start_postgres() {
  local pw="$1" conf_dir
  if ! pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" \
    '$1 == v && $2 == c {ok = 1} END {exit !ok}'; then
    log "creating PostgreSQL cluster $PG_VERSION/$PG_CLUSTER"
    pg_createcluster "$PG_VERSION" "$PG_CLUSTER" -p "$PG_PORT" >/dev/null
  fi
  conf_dir="/etc/postgresql/$PG_VERSION/$PG_CLUSTER/conf.d"
  install -d -o postgres -g postgres -m 0755 "$conf_dir"
  # max_connections: the tests run 16+ concurrent workers, each holding an Optuna storage
  # (a small SQLAlchemy pool) plus heartbeat threads; the default 100 runs out. Production
  # sizing is in slurm/README.md.
  cat >"$conf_dir/cnas-dev.conf.tmp" <<EOF
# Written by slurm/dev-cluster.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT
max_connections = 300
EOF
  local restart=0
  if ! cmp -s "$conf_dir/cnas-dev.conf.tmp" "$conf_dir/cnas-dev.conf"; then
    mv "$conf_dir/cnas-dev.conf.tmp" "$conf_dir/cnas-dev.conf"
    restart=1
  else
    rm -f "$conf_dir/cnas-dev.conf.tmp"
  fi
  if pg_running; then
    if ((restart)); then
      log "restarting PostgreSQL for the new settings"
      pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" restart
    fi
  else
    log "starting PostgreSQL $PG_VERSION/$PG_CLUSTER on 127.0.0.1:$PG_PORT"
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start
    touch "$RUN/postgres.started-here"
  fi
  wait_for pg_isready -q -h 127.0.0.1 -p "$PG_PORT" || {
    tail_log "/var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log"
    die "PostgreSQL does not accept connections"
  }
  # The password goes through stdin, not argv (visible in ps). It is hex: no quoting issue.
  if [[ "$(pg_sql -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_ROLE'")" == 1 ]]; then
    pg_sql <<<"ALTER ROLE $PG_ROLE WITH LOGIN CREATEDB PASSWORD '$pw';"
  else
    pg_sql <<<"CREATE ROLE $PG_ROLE WITH LOGIN CREATEDB PASSWORD '$pw';"
  fi
  if [[ "$(pg_sql -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]]; then
    pg_sql -c "CREATE DATABASE $PG_DB OWNER $PG_ROLE" >/dev/null
  fi
  write_pgpass "$pw"
}

# Root's ~/.pgpass gets the password so storage URLs carry none (libpq reads it).
write_pgpass() {
  local pw="$1" home pgpass
  home="$(getent passwd "$(id -un)" | cut -d: -f6)"
  pgpass="$home/.pgpass"
  touch "$pgpass"
  chmod 0600 "$pgpass"
  {
    grep -v -E "^(127\\.0\\.0\\.1|localhost):$PG_PORT:\\*:$PG_ROLE:" "$pgpass" || true
    printf '127.0.0.1:%s:*:%s:%s\n' "$PG_PORT" "$PG_ROLE" "$pw"
    printf 'localhost:%s:*:%s:%s\n' "$PG_PORT" "$PG_ROLE" "$pw"
  } >"$pgpass.tmp"
  chmod 0600 "$pgpass.tmp"
  mv "$pgpass.tmp" "$pgpass"
}

pg_login_ok() {
  psql -X -q -At -w "host=127.0.0.1 port=$PG_PORT user=$PG_ROLE dbname=$PG_DB" -c 'SELECT 1' \
    2>/dev/null | grep -qx 1
}

# -------------------------------------------------------------------------------------------- verbs
cmd_up() {
  [[ "$(id -u)" == 0 ]] || die "'up' must run as root (it starts system daemons)"
  install_packages
  install -d -m 0755 "$STATE_DIR" "$ETC" "$RUN" "$LOG" "$SPOOL"
  install -d -m 0700 "$SPOOL/slurmctld" "$SPOOL/slurmd"
  local mysql_pw pg_pw
  mysql_pw="$(secret "$STATE_DIR/mysql-slurm.password")"
  pg_pw="$(secret "$STATE_DIR/pg-$PG_ROLE.password")"
  start_munge
  write_slurm_conf
  write_slurmdbd_conf "$mysql_pw"
  start_mariadb "$mysql_pw"
  start_slurm
  start_postgres "$pg_pw"
  log "up: SLURM cluster '$CLUSTER_NAME' (partitions debug, high) and PostgreSQL are running"
  echo "storage URL: $STORAGE_URL"
}

cmd_down() {
  stop_pid "$RUN/slurmd.pid" slurmd
  stop_pid "$RUN/slurmctld.pid" slurmctld
  stop_pid "$RUN/slurmdbd.pid" slurmdbd
  stop_pid "$MYSQL_PID" mariadbd
  if [[ -e "$RUN/postgres.started-here" ]]; then
    if pg_running; then
      log "stopping PostgreSQL $PG_VERSION/$PG_CLUSTER"
      pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop
    fi
    rm -f "$RUN/postgres.started-here"
  fi
  if [[ -e "$RUN/munged.started-here" ]]; then
    stop_pid /run/munge/munged.pid munged
    rm -f "$RUN/munged.started-here"
  fi
  log "down (packages and data kept in $STATE_DIR)"
}

cmd_status() {
  local bad=0 name
  # check NAME COMMAND...: one line per daemon/service, remembers a failure.
  check() {
    local what="$1"
    shift
    if "$@"; then
      printf '%-12s up\n' "$what"
    else
      printf '%-12s DOWN\n' "$what"
      bad=1
    fi
  }
  check munged pid_alive /run/munge/munged.pid munged
  check mariadbd pid_alive "$MYSQL_PID" mariadbd
  for name in slurmdbd slurmctld slurmd; do
    check "$name" pid_alive "$RUN/$name.pid" "$name"
  done
  check postgresql pg_isready -q -h 127.0.0.1 -p "$PG_PORT"
  # Needs the password in this user's ~/.pgpass (root's is written by 'up').
  check "login $PG_ROLE" pg_login_ok
  if sinfo >/dev/null 2>&1; then
    sinfo
    sinfo -h -N -n "$HOST" -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc|comp|plnd)[~#!%$@^+-]?$' ||
      {
        echo "node $HOST is not usable"
        bad=1
      }
  else
    echo "sinfo fails"
    bad=1
  fi
  sacct -n -X -S now >/dev/null 2>&1 || {
    echo "sacct fails (accounting down)"
    bad=1
  }
  echo "storage URL: $STORAGE_URL"
  return "$bad"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
