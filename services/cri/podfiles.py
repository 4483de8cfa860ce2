"""A pod's /etc/resolv.conf, /etc/hosts and /etc/hostname, written once for all of its containers.

resolv.conf is the pod's DNS config when it has one (servers, searches, options), else the node's
own, as kubelet's runtimes do; hosts names localhost and the pod's hostname at its IP.
"""

from __future__ import annotations

from pathlib import Path

from services.common.atomic import atomic_write
from services.gen.runtime.v1 import DnsConfig

HOST_RESOLV = Path("/etc/resolv.conf")


def resolv_conf(dns: DnsConfig | None) -> bytes:
    if dns is None or not (dns.servers or dns.searches or dns.options):
        try:
            return HOST_RESOLV.read_bytes()
        except OSError:
            return b""
    lines = [f"nameserver {s}" for s in dns.servers]
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return ("\n".join(lines) + "\n").encode()


def hosts(hostname: str, ip: str) -> bytes:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", "fe00::0\tip6-localnet",
             "fe00::0\tip6-mcastprefix", "fe00::1\tip6-allnodes", "fe00::2\tip6-allrouters"]
    if ip and hostname:
        lines.append(f"{ip}\t{hostname}")
    return ("\n".join(lines) + "\n").encode()


def write(folder: Path, hostname: str, ip: str, dns: DnsConfig | None) -> None:
    """The three files under ``folder`` (blocking)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "resolv.conf", resolv_conf(dns), durable=False, mode=0o644)
    atomic_write(folder / "hosts", hosts(hostname, ip), durable=False, mode=0o644)
    atomic_write(folder / "hostname", (hostname + "\n").encode(), durable=False, mode=0o644)
