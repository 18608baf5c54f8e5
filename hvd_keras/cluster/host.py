"""Which host a process runs on: an identity that tells apart hosts with equal hostnames, and this host's names.

A hostname alone does not identify a host: cloned images, containers and
misconfigured nodes share names (`localhost.localdomain`, `node`), and two
ranks on two such hosts would look like two ranks of one host to anything
that groups by name (GPU placement, the checkpoint directory check). The key
adds the machine id (`/etc/machine-id`, distinct per installed system) and
the boot id (distinct per running kernel, so per physical or virtual
machine) to the name.

Example:

```python
identity().name      # 'node1'
identity().key       # 'node1#3f2a9c1e07'
is_local("10.0.0.1") # True when one of this host's interfaces has that address
```
"""

import dataclasses
import hashlib
import ipaddress
import socket

_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id", "/proc/sys/kernel/random/boot_id")


@dataclasses.dataclass(frozen=True, order=True)
class Identity:
    name: str   # the hostname, for messages
    key: str    # what two processes compare to know they share a host

    def __str__(self):
        return self.name


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def identity(hostname=None, files=_ID_FILES):
    """This host's `Identity`: its hostname, and a key from the hostname, machine id and boot id."""
    name = socket.gethostname() if hostname is None else hostname
    digest = hashlib.sha256("\0".join([name, *(_read(p) for p in files)]).encode()).hexdigest()[:10]
    return Identity(name=name, key=f"{name}#{digest}")


def local_addresses():
    """Every address of this host's interfaces (IPv4 and IPv6, loopback included), as strings."""
    try:
        import psutil  # a dependency of horovod's launcher
    except ImportError:
        return set()
    addresses = set()
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                addresses.add(entry.address.split("%", 1)[0])
    return addresses


def local_names():
    """The names this host answers to: localhost, its hostname (short and qualified) and its interfaces' names."""
    names = {"localhost", socket.gethostname()}
    names.add(socket.gethostname().split(".", 1)[0])
    try:
        names.add(socket.getfqdn())
    except OSError:
        pass
    try:
        names.update(name for _, name in socket.if_nameindex())
    except OSError:
        pass
    return names


def _is_loopback(address):
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def is_local(host, names=None, addresses=None, resolve=None):
    """True when `host` (a name, an address, or an interface's name) means this host.

    A name counts when it is one of `local_names()` or resolves to a
    loopback address or an address of one of this host's interfaces.

    Args:
        names, addresses, resolve: stand-ins for `local_names()`,
            `local_addresses()` and the resolver (`host -> [addresses]`), for tests.
    """
    names = local_names() if names is None else names
    if host in names:
        return True
    addresses = local_addresses() if addresses is None else addresses
    candidates = {host} if _is_address(host) else set((resolve or _resolve)(host))
    return any(_is_loopback(a) or a in addresses for a in candidates)


def _is_address(text):
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _resolve(host):
    try:
        return {info[4][0].split("%", 1)[0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return set()
