#!/usr/bin/env bash
# One-node SLURM cluster on this host (Debian 12, root, no systemd) for the dispatch integration tests.
#   WITH_DBD=1   also MariaDB + slurmdbd, so sacct works and submitit sees real job states
#                (without it a cancelled job stays UNKNOWN and result() waits forever)
#   FAKE_GPUS=N  advertise N fake GPUs (character devices) so gpus_per_node>0 jobs can be scheduled
# Idempotent: a daemon already answering is left alone. Stop everything with scripts/slurm_down.sh.
set -euo pipefail
WITH_DBD=${WITH_DBD:-1}; FAKE_GPUS=${FAKE_GPUS:-0}
export DEBIAN_FRONTEND=noninteractive
[ "$(id -u)" = 0 ] || { echo "slurm_up.sh: must run as root (it installs packages and starts daemons)" >&2; exit 1; }
if sinfo -h >/dev/null 2>&1; then echo "slurm_up.sh: a cluster already answers sinfo; nothing to do"; sinfo; exit 0; fi

pkgs="slurm-wlm munge"; [ "$WITH_DBD" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends $missing >/dev/null
fi

H=$(hostname -s); CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) * 85 / 100 ))  # Slurm rejects --mem without RealMemory
mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
GRES_LINE=""; NODE_GRES=""
if [ "$FAKE_GPUS" -gt 0 ]; then
  # slurmd drops file-less GPUs; character devices (like /dev/null) satisfy its check.
  for i in $(seq 0 $((FAKE_GPUS - 1))); do [ -e /dev/fakegpu$i ] || mknod /dev/fakegpu$i c 1 3; done
  echo "NodeName=$H Name=gpu File=/dev/fakegpu[0-$((FAKE_GPUS - 1))]" > /etc/slurm/gres.conf
  GRES_LINE="GresTypes=gpu"; NODE_GRES="Gres=gpu:$FAKE_GPUS"
fi
if [ "$WITH_DBD" = 1 ]; then ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux"
else ACCT="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"; fi
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=$H(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
$ACCT
JobCompType=jobcomp/none
$GRES_LINE
NodeName=$H NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB $NODE_GRES State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

[ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
mkdir -p /run/munge && chown munge:munge /run/munge
munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || runuser -u munge -- /usr/sbin/munged
munge -n | unmunge >/dev/null

if [ "$WITH_DBD" = 1 ]; then
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  if ! mariadb -e 'SELECT 1' >/dev/null 2>&1; then
    # socket only (no TCP port)
    /usr/sbin/mariadbd --user=mysql --skip-networking --pid-file=/run/mysqld/mysqld.pid \
        >/var/log/slurm/mariadb.log 2>&1 &
    for _ in $(seq 1 60); do mariadb -e 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.5; done
  fi
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmdbpass';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmdbpass
StorageLoc=slurm_acct_db
CONF
  chmod 600 /etc/slurm/slurmdbd.conf
  [ -s /run/slurmdbd.pid ] && kill -0 "$(cat /run/slurmdbd.pid)" 2>/dev/null || /usr/sbin/slurmdbd
  for _ in $(seq 1 60); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
  sacctmgr -i add cluster local >/dev/null 2>&1 || true
fi
[ -s /run/slurmctld.pid ] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null || /usr/sbin/slurmctld
[ -s /run/slurmd.pid ] && kill -0 "$(cat /run/slurmd.pid)" 2>/dev/null || /usr/sbin/slurmd
for _ in $(seq 1 60); do sinfo -h -o %T 2>/dev/null | grep -qx idle && break; sleep 0.5; done
sinfo -h >/dev/null || { echo "slurm_up.sh: sinfo still fails; see /var/log/slurm/*.log" >&2; exit 1; }
sinfo
