#!/usr/bin/env bash
# A real single-node SLURM on this machine, and the embedded-default DAG (tiny config) run through
# profiles/slurm on it: install Debian's slurmctld/slurmd/munge, write /etc/slurm/slurm.conf, start
# munged, slurmctld and slurmd without systemd, wait for the node, run Snakemake, check that every
# job ran as a SLURM job, stop the daemons by pid. Every wait is bounded; failures print the logs.
# Needs root (CI and the developer machines are). Usage: bash tests/slurm/run.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/eam-slurm.XXXXXX)
START=$(date +%s)
say() { echo "slurm-test: $*"; }
fail() { say "FAILED: $*"; for f in "$WORK"/*.log; do echo "--- $f"; tail -n 40 "$f"; done; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  say "installing slurmctld slurmd slurm-client munge"
  timeout 300 apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

cleanup() {
  for pidfile in "$WORK/slurmd.pid" "$WORK/slurmctld.pid" /run/munge/eam-ci.pid; do
    [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
}
trap cleanup EXIT

# munge: a key readable only by the munge user, its socket under /run/munge
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
rm -f /run/munge/eam-ci.pid
runuser -u munge -- /usr/sbin/munged --force --pid-file=/run/munge/eam-ci.pid --log-file=/var/log/munge/eam-ci.log \
  || fail "munged did not start: $(tail -n 3 /var/log/munge/eam-ci.log 2>/dev/null)"
timeout 10 bash -c 'until munge -n | unmunge >/dev/null 2>&1; do sleep 0.2; done' || fail "munge does not answer"

# slurm.conf: this machine as node "localhost", two partitions, and two GPUs declared as a generic
# resource on two stand-in device files (character devices like /dev/null: slurmd only counts them, no
# cgroup constrains them), so that a GPU request is scheduled and recorded; no accounting database, so jobs must stay visible to squeue long enough for Snakemake's
# status checks (MinJobAge).
node="$(slurmd -C | head -n 1 | sed -E 's/^NodeName=[^ ]+/NodeName=localhost/') Gres=gpu:2"
mkdir -p /etc/slurm "$WORK/state" "$WORK/spool"
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=eamci
SlurmctldHost=localhost
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=3600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
GresTypes=gpu
$node State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=second Nodes=localhost MaxTime=INFINITE State=UP
CONF
mkdir -p "$WORK/dev"
for i in 0 1; do mknod -m 666 "$WORK/dev/gpu$i" c 1 3; done
echo "NodeName=localhost Name=gpu File=$WORK/dev/gpu[0-1]" > /etc/slurm/gres.conf
slurmctld -i || fail "slurmctld did not start"
slurmd -N localhost || fail "slurmd did not start"
timeout 60 bash -c 'until [ "$(sinfo -h -N -o %T 2>/dev/null | sort -u)" = idle ]; do sleep 1; done' \
  || fail "node not idle after 60 s: $(sinfo -N 2>&1 | tail -n 1)"
say "SLURM up in $(( $(date +%s) - START )) s: $(sinfo -h -N -o '%N %T %c CPUs' | sort -u | head -n 1), partitions $(sinfo -h -o %P | tr '\n' ' ')"

# the embedded-default DAG on the tiny config, through the project's profile; the fine-tuning jobs on the
# second partition with 2 threads and one GPU each (as the t2i rules ask), to check what the profile hands to sbatch
RUN="$WORK/run"
mkdir -p "$RUN/tests"
cp -r "$ROOT/Snakefile" "$ROOT/workflow" "$ROOT/config" "$ROOT/profiles" "$ROOT/environment.yml" "$RUN/"
cp -r "$ROOT/tests/data" "$RUN/tests/"
cp "$ROOT/tests/slurm/fewer_jobs.yaml" "$RUN/tests/data/"
cd "$RUN"
# no slurmdbd here: query squeue, not sacct (the profile's default, for clusters with accounting)
timeout 1500 snakemake all --profile profiles/slurm --configfile tests/data/tiny_config.yaml tests/data/fewer_jobs.yaml \
  --slurm-status-command squeue --slurm-init-seconds-before-status-checks 5 --slurm-no-account \
  --set-resources digits_finetune:slurm_partition=second digits_finetune:gpu=1 --set-threads digits_finetune=2 \
  > "$WORK/snakemake.log" 2>&1 || fail "snakemake through SLURM failed (exit $?)"

ids=$(grep -oE "SLURM jobid [0-9]+" "$WORK/snakemake.log" | awk '{print $3}' | sort -n | uniq)
n_ids=$(echo "$ids" | grep -c . || true)
n_jobs=$(grep -cE "^(localrule|rule) " "$WORK/snakemake.log" || true)
n_local=$(grep -cE "^localrule " "$WORK/snakemake.log" || true)
say "SLURM job ids: $(echo $ids)"
[ "$n_ids" -ge 1 ] && [ "$n_ids" -eq $(( n_jobs - n_local )) ] \
  || fail "expected every non-local job to run under SLURM: $n_ids job ids for $n_jobs jobs ($n_local local)"
for id in $ids; do
  state=$(scontrol show job "$id" 2>/dev/null | grep -oE "JobState=[A-Z]+" || true)
  [ "$state" = JobState=COMPLETED ] || fail "SLURM job $id: ${state:-unknown to slurmctld}"
done
n_ft=0
for id in $ids; do
  info=$(scontrol show job "$id")
  case "$info" in *rule_digits_finetune_*) ;; *) continue ;; esac
  n_ft=$((n_ft + 1))
  echo "$info" | grep -q "Partition=second" || fail "fine-tuning job $id not on partition 'second': $(echo "$info" | grep -o 'Partition=[^ ]*')"
  echo "$info" | grep -qE "CPUs/Task=2( |$)" || fail "fine-tuning job $id: $(echo "$info" | grep -oE 'CPUs/Task=[^ ]*') (want its 2 threads)"
  echo "$info" | grep -qE "Tres[A-Za-z]*=gres[/:]gpu[:=]1( |,|$)" \
    || fail "fine-tuning job $id: no request for one GPU ($(echo "$info" | grep -oE 'Tres[A-Za-z]*=[^ ]*' | tr '\n' ' '))"
done
[ "$n_ft" -ge 1 ] || fail "no digits_finetune job among the SLURM jobs"
say "fine-tuning jobs: $n_ft on partition 'second' with CPUs/Task=2 and one GPU each"
for f in results/gmm/report/table.md results/digits/report/table.md; do
  [ -s "$f" ] || fail "$f missing after the SLURM run"
done
say "passed: $n_ids SLURM jobs completed, $n_local local, in $(( $(date +%s) - START )) s"
