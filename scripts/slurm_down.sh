#!/usr/bin/env bash
# Stop the one-node cluster started by scripts/slurm_up.sh: each daemon by the PID in its pid file,
# in dependency order, waiting for each to exit (never pkill/killall: the machine is shared).
set -u
for pf in /run/slurmd.pid /run/slurmctld.pid /run/slurmdbd.pid /run/mysqld/mysqld.pid /run/munge/munged.pid; do
  [ -s "$pf" ] || continue
  pid=$(cat "$pf")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
done
exit 0
