"""A real 2-node Slurm on namespace hosts: slurmctld on the head, one slurmd per node, munged on every host.

Built on `netns_hosts.Hosts`: one munge key for all hosts, each host's
munged on its own /run/munge, slurm.conf in /etc/slurm of every host (one
directory, as a cluster shares it), and the nodes' spool, pid and log files
named by node (`%n`). Nothing is a mock: jobs run under each node's slurmd.
"""

import os
import re
import time

from netns_hosts import login_env

CONF = """ClusterName=hvdkmulti
SlurmctldHost={head}({head_address})
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/%n/spool
SlurmctldLogFile={d}/ctld.log
SlurmdLogFile={d}/%n/d.log
SlurmctldPidFile={d}/ctld.pid
SlurmdPidFile={d}/%n/d.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=300
{nodes}
PartitionName=debug Nodes={node_list} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""

FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


class SlurmOnHosts:
    """Slurm over `hosts`: controller on `hosts.names[0]`, a node on each of the others.

    Commands run on the head (`run`, `sbatch`), as a user logged in there would.
    """

    def __init__(self, hosts, cpus=2):
        self.hosts = hosts
        self.head, self.nodes = hosts.names[0], hosts.names[1:]
        self.dir = os.path.join(hosts.base, "slurm")
        for sub in ("state", *(f"{n}/spool" for n in self.nodes)):
            os.makedirs(os.path.join(self.dir, sub))
        nodes = "\n".join(f"NodeName={n} NodeAddr={hosts.addresses[n]} CPUs={cpus} RealMemory=2000 State=UNKNOWN"
                          for n in self.nodes)
        with open(os.path.join(hosts.etc_slurm, "slurm.conf"), "w") as f:
            f.write(CONF.format(head=self.head, head_address=hosts.addresses[self.head], d=self.dir, nodes=nodes,
                                node_list=",".join(self.nodes)))
        # Clients find /etc/slurm/slurm.conf on every host; no SLURM_* (or other job variable) of the caller leaks in.
        self.env = login_env()

    def start(self, timeout=60):
        key = os.path.join(self.hosts.base, "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        # munged before slurmctld and slurmd, or they fail authentication.
        for name in self.hosts.names:
            d = self.hosts.host_dir(name)
            self.hosts.run(name, ["munged", "--force", f"--key-file={key}", f"--log-file={d}/munged.log",
                                  f"--seed-file={d}/munged.seed"])
        self.hosts.run(self.head, ["slurmctld"], env=self.env)
        for node in self.nodes:
            self.hosts.run(node, ["slurmd", "-N", node], env=self.env)
        deadline = time.monotonic() + timeout
        while True:
            out = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False)
            states = dict(line.split() for line in out.stdout.splitlines() if line.strip())
            if all(states.get(n) == "idle" for n in self.nodes):
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"Slurm nodes never became idle: {out.stdout} {out.stderr}\n{self.logs()}")
            time.sleep(0.3)

    def run(self, cmd, host=None, **kwargs):
        kwargs.setdefault("env", self.env)
        return self.hosts.run(host or self.head, cmd, **kwargs)

    def logs(self):
        text = []
        for path in ["ctld.log", *(f"{n}/d.log" for n in self.nodes)]:
            try:
                with open(os.path.join(self.dir, path)) as f:
                    text.append(f"--- {path}\n" + f.read()[-2500:])
            except OSError:
                pass
        return "\n".join(text)

    def sbatch(self, args, env=None, cwd=None):
        out = self.run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})}, cwd=cwd, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} failed: {out.stderr}")
        return int(out.stdout.strip().split(";")[0])

    def job_field(self, job_id, field):
        out = self.run(["scontrol", "show", "job", str(job_id)], check=False)
        match = re.search(rf"\b{field}=(\S+)", out.stdout)
        return match.group(1) if match else None

    def wait(self, job_id, states=FINAL_STATES, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.job_field(job_id, "JobState")
            if state in states:
                return state
            time.sleep(0.3)
        raise TimeoutError(f"job {job_id} still {self.job_field(job_id, 'JobState')} after {timeout}s\n{self.logs()}")
