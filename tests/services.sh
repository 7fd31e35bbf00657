#!/usr/bin/env bash
# Start the real services the marked tests talk to, on this machine (Debian/Ubuntu, as root, no
# systemd needed): a single-node SLURM (tests marked `slurm`) and PostgreSQL (tests marked
# `postgres`). Installs the Debian packages when they are missing; safe to run again.
#
#   sudo bash tests/services.sh        # then, in the same shell as pytest:
#   export PGPASSWORD=optuna SCVI_SWEEP_POSTGRES=postgresql://optuna@localhost/optuna
#   python -m pytest -m "slurm or postgres"
#
# SLURM: one node (this host, all its CPUs, 85% of its memory), one default partition `debug`,
# no accounting (submitit then logs "Bypassing sacct error" while it polls; harmless).
# PostgreSQL: the distribution's cluster on localhost:5432, role `optuna` (password `optuna`,
# given to clients through PGPASSWORD: the project refuses passwords in URLs), database `optuna`.
set -euo pipefail

need=()
command -v slurmctld >/dev/null || need+=(slurm-wlm)
command -v munged >/dev/null || need+=(munge)
command -v pg_ctlcluster >/dev/null || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- munge (SLURM's authentication) ---
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; }
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c munged

# --- SLURM ---
host=$(hostname)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.85)}' /proc/meminfo)
mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=scvisweep
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
MinJobAge=600
KillWait=10
NodeName=$host CPUs=$(nproc) RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
  sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && break
  scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
  sleep 1
done
sinfo -h -o '%P %T %c cpus %m MB' | sed 's/^/slurm: /'

# --- PostgreSQL ---
version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
[ -n "$version" ] || { pg_createcluster 15 main >/dev/null; version=15; }
pg_ctlcluster "$version" main status >/dev/null 2>&1 || pg_ctlcluster "$version" main start
for _ in $(seq 30); do pg_isready -q -h localhost && break; sleep 1; done
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='optuna'\"" | grep -q 1 \
  || su postgres -c "psql -qc \"CREATE ROLE optuna LOGIN PASSWORD 'optuna'\""
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='optuna'\"" | grep -q 1 \
  || su postgres -c "createdb -O optuna optuna"
echo "postgres: $(pg_isready -h localhost) (database optuna, role optuna, PGPASSWORD=optuna)"
