"""Several hosts on one machine: Linux network namespaces joined by a bridge, each with sshd.

Each host is a network namespace with a UTS and mount namespace of its own
(held by one `sleep` process): its own hostname, address, /etc/hosts,
/etc/hostname, /etc/machine-id, /root (with its own ~/.ssh), /tmp, /run and
/dev/shm. Everything else (this checkout, its .venv, /usr) is shared, as a
cluster's NFS home and software tree are. The hosts reach one another, and
nothing else, through a bridge in a namespace of its own; no interface,
route or firewall rule of the machine's own namespace is touched. sshd runs
in every host with one generated key, so `ssh node2` works without a
password from every host, as on a cluster; root's real ~/.ssh is never read
or written.

Everything created is named `hvdk<pid>-*` and torn down by those names and
the process ids recorded: the processes inside each namespace (daemons,
ranks, launchers), then the namespaces, then the directory.

Example:

```python
hosts = Hosts(tmp_dir).start()
hosts.run("node1", ["ssh", "node2", "hostname"]).stdout  # 'node2\\n'
hosts.stop()
```
"""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SUBNET = "10.77.0"
NAMES = ("head", "node1", "node2")

SSHD_CONFIG = """Port 22
HostKey {key}
PidFile {pid_file}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes yes
PrintMotd no
LogLevel ERROR
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp none
"""

SSH_CLIENT_CONFIG = """Host *
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
  IdentityFile ~/.ssh/id_ed25519
  ConnectTimeout 5
"""

# Run inside the host's fresh UTS and mount namespaces; `exec sleep` keeps them.
# A sysfs of the host's network namespace (its /sys/class/net), with the
# machine's cgroup mounts on it as before (slurmd needs them). /root is the
# host's own directory with root's real entries bound into it (Python may
# live there, under ~/.pyenv), except ~/.ssh: the host's own.
HOLDER = """set -e
hostname {name}
mkdir -p {dir}/cgroup
mount --rbind /sys/fs/cgroup {dir}/cgroup
mount -t sysfs sysfs /sys
mount --rbind {dir}/cgroup /sys/fs/cgroup
umount -l {dir}/cgroup
{keep}mount --bind {dir}/tmp /tmp
{restore}mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/sshd /run/munge
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mkdir -p {dir}/home
mount --rbind /root {dir}/home
mount --bind {dir}/root /root
for entry in {dir}/home/* {dir}/home/.[!.]*; do
  name=${{entry##*/}}
  if [ "$name" = .ssh ] || [ ! -e "$entry" ]; then continue; fi
  if [ -d "$entry" ]; then mkdir -p "/root/$name"; else touch "/root/$name"; fi
  mount --rbind "$entry" "/root/$name"
done
mount --bind {dir}/etc/hosts /etc/hosts
mount --bind {dir}/etc/hostname /etc/hostname
mount --bind {dir}/etc/machine-id /etc/machine-id
mount --bind {etc_slurm} /etc/slurm
touch {dir}/ready
exec sleep infinity
"""


def _kept_under_tmp(d):
    """Shell lines that keep the checkout and the interpreter visible at their paths when they lie under /tmp.

    Each host gets a /tmp of its own; a checkout cloned into /tmp (a CI
    runner's) would vanish from the hosts with it. Such paths are bound
    aside before the host's /tmp is mounted, and back at the same path after.
    """
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = []
    for path in (checkout, sys.prefix, sys.base_prefix):
        path = os.path.realpath(path)
        if path.startswith("/tmp/") and not any(path == p or path.startswith(p + "/") for p in paths):
            paths.append(path)
    keep = "".join(f"mkdir -p {d}/keep/{i}\nmount --rbind {shlex.quote(p)} {d}/keep/{i}\n"
                   for i, p in enumerate(paths))
    restore = "".join(f"mkdir -p {shlex.quote(p)}\nmount --rbind {d}/keep/{i} {shlex.quote(p)}\n"
                      for i, p in enumerate(paths))
    return {"keep": keep, "restore": restore}


class HostsUnavailable(RuntimeError):
    """This machine cannot build namespace hosts (not root, or a tool is missing)."""


def unavailable_reason():
    """Why namespace hosts cannot be built here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (or CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    for tool in ("ip", "unshare", "nsenter", "ssh", "ssh-keygen", "/usr/sbin/sshd"):
        if not shutil.which(tool):
            return f"{tool} is not installed (apt-get install iproute2 util-linux openssh-server openssh-client)"
    return None


def _sh(cmd, check=True, timeout=30):
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout)


class Hosts:
    """Hosts `names` (the first is the head), addressed `SUBNET.1`, `SUBNET.2`, ...

    Args:
        names: the hosts' hostnames.
        base: a directory outside /tmp (each host has its own /tmp) for the
            hosts' files and `shared`, the directory every host sees.
    """

    def __init__(self, names=NAMES, base=None):
        self.names = list(names)
        self.tag = f"hvdk{os.getpid()}"
        self.base = base or tempfile.mkdtemp(prefix=f"{self.tag}-", dir="/var/tmp")
        self.shared = os.path.join(self.base, "shared")
        self.etc_slurm = os.path.join(self.base, "etc-slurm")
        self.switch = f"{self.tag}-sw"
        self.namespaces = {}
        self.holders = {}
        self.addresses = {name: f"{SUBNET}.{i + 1}" for i, name in enumerate(self.names)}
        self._started = []

    # --- set-up and tear-down ----------------------------------------------

    def start(self, timeout=30):
        reason = unavailable_reason()
        if reason:
            raise HostsUnavailable(reason)
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout):
        os.makedirs(self.shared)
        os.makedirs(self.etc_slurm)
        keys = os.path.join(self.base, "keys")
        os.makedirs(keys, mode=0o700)
        _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{keys}/id_ed25519"])
        _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{keys}/host_key"])
        hosts_file = "127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for n, a in self.addresses.items())
        self._netns(self.switch)
        _sh(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge"])
        _sh(["ip", "-n", self.switch, "link", "set", "br0", "up"])
        for i, name in enumerate(self.names):
            d = self.host_dir(name)
            for sub in ("tmp", "root/.ssh", "etc"):
                os.makedirs(os.path.join(d, sub))
            os.chmod(os.path.join(d, "tmp"), 0o1777)
            os.chmod(os.path.join(d, "root"), 0o700)
            os.chmod(os.path.join(d, "root/.ssh"), 0o700)
            for src, dst in (("id_ed25519", "id_ed25519"), ("id_ed25519.pub", "authorized_keys")):
                shutil.copy(f"{keys}/{src}", f"{d}/root/.ssh/{dst}")
                os.chmod(f"{d}/root/.ssh/{dst}", 0o600)
            _write(f"{d}/root/.ssh/config", SSH_CLIENT_CONFIG, 0o600)
            _write(f"{d}/etc/hosts", hosts_file)
            _write(f"{d}/etc/hostname", name + "\n")
            _write(f"{d}/etc/machine-id", f"{self.tag}{i:04d}".encode().hex()[:32].ljust(32, "0") + "\n")
            _write(f"{d}/sshd_config", SSHD_CONFIG.format(key=f"{keys}/host_key", pid_file=f"{d}/sshd.pid"))
            ns = self._netns(f"{self.tag}-{name}")
            self.namespaces[name] = ns
            port = f"p{i}"
            _sh(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port,
                 "netns", self.switch])
            _sh(["ip", "-n", ns, "addr", "add", f"{self.addresses[name]}/24", "dev", "eth0"])
            _sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
            _sh(["ip", "-n", self.switch, "link", "set", port, "master", "br0", "up"])
            self.holders[name] = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{ns}", "unshare", "--uts", "--mount", "--propagation", "private",
                 "/bin/sh", "-c", HOLDER.format(name=name, dir=d, etc_slurm=self.etc_slurm,
                                                **_kept_under_tmp(d))],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(f"{d}/holder.log", "w"))
        deadline = time.monotonic() + timeout
        for name in self.names:
            while not os.path.exists(f"{self.host_dir(name)}/ready"):
                if self.holders[name].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"host {name} did not start: {_read(self.host_dir(name) + '/holder.log')}")
                time.sleep(0.02)
            self.run(name, ["/usr/sbin/sshd", "-f", f"{self.host_dir(name)}/sshd_config",
                            "-E", f"{self.host_dir(name)}/sshd.log"])
        for name in self.names:  # every host reaches every other by name
            for other in self.names:
                self._wait_ssh(name, other, deadline)

    def _wait_ssh(self, name, other, deadline):
        while True:
            out = self.run(name, ["ssh", other, "hostname"], check=False, timeout=15)
            if out.returncode == 0 and out.stdout.strip() == other:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"ssh {name} -> {other} failed: {out.stderr.strip()} "
                                   f"{_read(self.host_dir(other) + '/sshd.log')}")
            time.sleep(0.1)

    def _netns(self, ns):
        _sh(["ip", "netns", "add", ns])
        self._started.append(ns)
        _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        return ns

    def stop(self):
        """Ends every process in the hosts' namespaces, then deletes the namespaces and the directory."""
        for ns in reversed(self._started):
            _kill_namespace(ns)
            _sh(["ip", "netns", "del", ns], check=False)
        for holder in self.holders.values():
            try:
                holder.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._started = []
        shutil.rmtree(self.base, ignore_errors=True)

    # --- use ----------------------------------------------------------------

    def host_dir(self, name):
        return os.path.join(self.base, "hosts", name)

    def local_path(self, name, path):
        """Where `path` under the host's own /tmp or /root lies, seen from this (the root) namespace."""
        for private in ("/tmp", "/root"):
            if path == private or path.startswith(private + "/"):
                return self.host_dir(name) + path
        raise ValueError(f"{path} is not private to a host. HINT: pass a path under /tmp or /root.")

    def command(self, name, cmd, cwd=None):
        """`cmd` wrapped to run inside host `name`'s namespaces."""
        return ["nsenter", "-t", str(self.holders[name].pid), "-n", "-u", "-m",
                f"--wd={cwd or os.getcwd()}", *cmd]

    def popen(self, name, cmd, cwd=None, **kwargs):
        kwargs.setdefault("env", login_env())
        return subprocess.Popen(self.command(name, cmd, cwd), **kwargs)

    def run(self, name, cmd, cwd=None, check=True, timeout=60, **kwargs):
        kwargs.setdefault("env", login_env())
        proc = subprocess.run(self.command(name, cmd, cwd), capture_output=True, text=True, timeout=timeout,
                              **kwargs)
        if check and proc.returncode != 0:
            raise RuntimeError(f"on {name}: {' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
        return proc

    def pids(self, name):
        """Process ids running in host `name` (its network namespace)."""
        out = _sh(["ip", "netns", "pids", self.namespaces[name]], check=False)
        return [int(p) for p in out.stdout.split()]

    def cut(self, name):
        """Unplugs host `name`'s cable: its switch port goes down, packets are dropped without a reset."""
        _sh(["ip", "-n", self.switch, "link", "set", f"p{self.names.index(name)}", "down"])

    def plug(self, name):
        _sh(["ip", "-n", self.switch, "link", "set", f"p{self.names.index(name)}", "up"])

    def set_hostname(self, name, hostname):
        """Changes what `gethostname()` says on host `name` (its /etc/hosts and address stay)."""
        self.run(name, ["hostname", hostname])


# What a job's processes inherit from their launcher; a fresh login on a host has none of it.
_JOB_VARIABLES = ("OMPI_", "PMIX_", "PMI_", "HOROVOD_", "SLURM_")


def login_env():
    """This process's environment without a launcher's job variables.

    Passed explicitly: an in-process `hvd.init()` of an earlier test starts an
    MPI singleton, which sets OpenMPI's job variables in the C environment
    that children inherit by default; an mpirun started with them fails.
    """
    return {k: v for k, v in os.environ.items()
            if not k.startswith(_JOB_VARIABLES) or k.startswith("OMPI_ALLOW_RUN_AS_ROOT")}


def _kill_namespace(ns):
    """SIGTERM, then SIGKILL, to every process in network namespace `ns` (all of them were started by us)."""
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        pids = _ns_pids(ns)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while _ns_pids(ns) and time.monotonic() < deadline:
            time.sleep(0.05)


def _ns_pids(ns):
    out = _sh(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in out.stdout.split()]


def _write(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _read(path):
    try:
        with open(path) as f:
            return f.read()[-2000:]
    except OSError:
        return ""
