"""A real single-node Slurm cluster for the launch tests (Debian's slurm-wlm and munge).

Starts munged, slurmctld and slurmd with a configuration in a temporary
directory, waits until `sinfo` shows the node idle, and stops them afterwards.
Nothing here is a mock: jobs really run under slurmd.
"""

import os
import socket
import subprocess
import time

CONF = """ClusterName=hvdkeras
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldLogFile={d}/ctld.log
SlurmdLogFile={d}/d.log
SlurmctldPidFile={d}/ctld.pid
SlurmdPidFile={d}/d.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=300
NodeName=localhost CPUs={cpus} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd, env, check=True, timeout=60):
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=check, timeout=timeout)


class SlurmCluster:
    def __init__(self, directory, cpus=2):
        self.dir = str(directory)
        for sub in ("state", "spool"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        self.conf = os.path.join(self.dir, "slurm.conf")
        with open(self.conf, "w") as f:
            f.write(CONF.format(d=self.dir, cpus=cpus, ctld_port=_free_port(), d_port=_free_port()))
        self.env = dict(os.environ, SLURM_CONF=self.conf)
        for k in [k for k in self.env if k.startswith("SLURM_") and k != "SLURM_CONF"]:
            del self.env[k]

    def start(self, timeout=60):
        # munged must run before slurmctld and slurmd, or they fail authentication.
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
            os.makedirs("/run/munge", exist_ok=True)
            subprocess.run(["chown", "-R", "munge:munge", "/run/munge", "/var/log/munge", "/var/lib/munge",
                            "/etc/munge"], check=False)
            _run(["su", "-s", "/bin/sh", "munge", "-c", "munged"], self.env)
        _run(["slurmctld"], self.env)
        _run(["slurmd"], self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = _run(["sinfo", "-h", "-o", "%t"], self.env, check=False)
            if out.stdout.strip() == "idle":
                return self
            time.sleep(0.5)
        raise RuntimeError(f"Slurm node never became idle: {out.stdout} {out.stderr}\n{self.logs()}")

    def logs(self):
        text = []
        for name in ("ctld.log", "d.log"):
            path = os.path.join(self.dir, name)
            if os.path.exists(path):
                with open(path) as f:
                    text.append(f.read()[-3000:])
        return "\n".join(text)

    def stop(self):
        for pidfile in ("d.pid", "ctld.pid"):
            path = os.path.join(self.dir, pidfile)
            if os.path.exists(path):
                with open(path) as f:
                    pid = int(f.read().strip() or 0)
                if pid:
                    try:
                        os.kill(pid, 15)
                    except ProcessLookupError:
                        pass
        time.sleep(1)

    def job_state(self, job_id):
        out = _run(["scontrol", "show", "job", str(job_id)], self.env, check=False)
        for field in out.stdout.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return None

    def wait(self, job_id, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"), timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state in states:
                return state
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} still {self.job_state(job_id)} after {timeout}s")

    def sbatch(self, script, cwd, extra_env=None):
        out = _run(["sbatch", "--parsable", script], {**self.env, **(extra_env or {})}, check=False)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.strip().split(";")[0])
