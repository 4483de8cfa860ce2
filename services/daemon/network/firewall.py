"""Forwarding and NAT rules for Skiff's bridges, so they work next to Docker (FORWARD policy DROP,
br_netfilter loaded) and are isolated from each other.

Why the ``iptables`` binary: pyroute2 has no iptables or nftables API that fits (its nftables
support is partial and the rules must stay visible to, and coexist with, Docker's iptables-nft
rules), and the kernel's iptables interface is a binary blob protocol, not netlink. So this one
module shells out, with ``-w`` (wait for the xtables lock) and a timeout on every call.

Layout, all idempotent (checked with ``-C`` before inserting):
  filter FORWARD  -> -j SKIFF-FORWARD (inserted first)
  SKIFF-FORWARD   -> -j SKIFF-ISOLATION-1; then per bridge: -o BR -j ACCEPT, -i BR -j ACCEPT
  SKIFF-ISOLATION-1: per bridge: -i BR ! -o BR -j SKIFF-ISOLATION-2
  SKIFF-ISOLATION-2: per bridge: -o BR -j DROP      (one bridge never reaches another, as Docker does)
  nat POSTROUTING -> per subnet: -s SUBNET ! -o BR -j MASQUERADE

The chains and the FORWARD jump are shared by every Skiff daemon of the network namespace (one per
root prefix); ``remove_base_if_unused`` takes them away once no bridge has a rule left. That check and
its removal, and every add, hold one host-wide lock, so a daemon adding its first network never has
the chains deleted under it by another one removing its last.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

from services.common.errors import FailedPrecondition, Internal

FORWARD_CHAIN = "SKIFF-FORWARD"
ISOLATION_1 = "SKIFF-ISOLATION-1"
ISOLATION_2 = "SKIFF-ISOLATION-2"
TIMEOUT = 10.0
COMMENT = "skiff"
LOCK_PATH = "/run/skiff-firewall.lock"
LOCK_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Rule:
    table: str
    chain: str
    spec: tuple[str, ...]


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("iptables")
    if binary is None:
        raise FailedPrecondition("iptables is not installed: Skiff's bridges need it for forwarding and NAT")
    try:
        return subprocess.run([binary, "-w", "5", *args], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise Internal(f"iptables {' '.join(args)}: no answer within {TIMEOUT:.0f}s") from None


def _must(*args: str) -> None:
    done = _iptables(*args)
    if done.returncode != 0:
        raise Internal(f"iptables {' '.join(args)}: {done.stderr.strip() or f'exit {done.returncode}'}")


def _exists(rule: Rule) -> bool:
    return _iptables("-t", rule.table, "-C", rule.chain, *rule.spec).returncode == 0


def _ensure_chain(table: str, chain: str) -> None:
    if _iptables("-t", table, "-n", "-L", chain).returncode != 0:
        done = _iptables("-t", table, "-N", chain)
        # exit 1 "Chain already exists": a concurrent ensure won; anything else is a fault.
        if done.returncode != 0 and "exists" not in done.stderr:
            raise Internal(f"iptables -N {chain}: {done.stderr.strip()}")


def _insert(rule: Rule, position: int | None = None) -> None:
    if not _exists(rule):
        if position is None:
            _must("-t", rule.table, "-A", rule.chain, *rule.spec)
        else:
            _must("-t", rule.table, "-I", rule.chain, str(position), *rule.spec)


def _delete(rule: Rule) -> None:
    # Bounded: a rule added twice by hand is removed at most a few times over.
    for _ in range(8):
        if not _exists(rule):
            return
        done = _iptables("-t", rule.table, "-D", rule.chain, *rule.spec)
        # Another daemon's reconcile may have removed it between the check and here: gone is what we wanted.
        if done.returncode != 0 and _exists(rule):
            raise Internal(f"iptables -D {rule.chain} {' '.join(rule.spec)}: {done.stderr.strip()}")


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """The host-wide firewall lock (flock), waited for at most ``LOCK_TIMEOUT`` seconds."""
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise Internal(f"firewall lock {LOCK_PATH}: {exc.strerror}") from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the lock


def enable_ip_forward() -> None:
    with open("/proc/sys/net/ipv4/ip_forward", "r+") as f:
        if f.read().strip() != "1":
            f.seek(0)
            f.write("1")


def ensure_base() -> None:
    """The Skiff chains and the jumps into them; ``ip_forward`` on."""
    enable_ip_forward()
    for chain in (FORWARD_CHAIN, ISOLATION_1, ISOLATION_2):
        _ensure_chain("filter", chain)
    _insert(Rule("filter", "FORWARD", ("-j", FORWARD_CHAIN)), position=1)
    _insert(Rule("filter", FORWARD_CHAIN, ("-j", ISOLATION_1)), position=1)


def network_rules(bridge: str, subnet: ipaddress.IPv4Network, masquerade: bool = True) -> list[Rule]:
    rules = [
        Rule("filter", ISOLATION_1, ("-i", bridge, "!", "-o", bridge, "-j", ISOLATION_2)),
        Rule("filter", ISOLATION_2, ("-o", bridge, "-j", "DROP")),
        Rule("filter", FORWARD_CHAIN, ("-o", bridge, "-j", "ACCEPT")),
        Rule("filter", FORWARD_CHAIN, ("-i", bridge, "-j", "ACCEPT")),
    ]
    if masquerade:
        rules.append(Rule("nat", "POSTROUTING", ("-s", str(subnet), "!", "-o", bridge, "-j", "MASQUERADE")))
    return rules


def add_network(bridge: str, subnet: ipaddress.IPv4Network, masquerade: bool = True) -> None:
    with _locked():
        ensure_base()
        added: list[Rule] = []
        try:
            for rule in network_rules(bridge, subnet, masquerade):
                _insert(rule)
                added.append(rule)
        except BaseException:
            for rule in reversed(added):  # nothing half-made: a network has all its rules or none
                _delete(rule)
            raise


def remove_network(bridge: str, subnet: ipaddress.IPv4Network) -> None:
    for rule in reversed(network_rules(bridge, subnet, masquerade=True)):
        _delete(rule)


def remove_base_if_unused() -> bool:
    """The FORWARD jump and the Skiff chains, once no bridge has a rule in them; True if removed."""
    with _locked():
        if bridges_with_rules():
            return False
        _delete(Rule("filter", "FORWARD", ("-j", FORWARD_CHAIN)))
        for chain in (FORWARD_CHAIN, ISOLATION_1, ISOLATION_2):
            if _iptables("-t", "filter", "-n", "-L", chain).returncode == 0:
                _must("-t", "filter", "-F", chain)
        for chain in (FORWARD_CHAIN, ISOLATION_1, ISOLATION_2):
            if _iptables("-t", "filter", "-n", "-L", chain).returncode == 0:
                _must("-t", "filter", "-X", chain)
        return True


def bridges_with_rules() -> set[str]:
    """Bridges named in Skiff's own chains (for reconciliation)."""
    found: set[str] = set()
    for chain in (FORWARD_CHAIN, ISOLATION_2):
        done = _iptables("-t", "filter", "-S", chain)
        if done.returncode != 0:
            continue
        for line in done.stdout.splitlines():
            words = line.split()
            if "-o" in words:
                found.add(words[words.index("-o") + 1])
            if "-i" in words:
                found.add(words[words.index("-i") + 1])
    return found


def masquerade_rules() -> list[tuple[str, str]]:
    """(subnet, bridge) of every MASQUERADE rule shaped like Skiff's."""
    done = _iptables("-t", "nat", "-S", "POSTROUTING")
    found = []
    for line in done.stdout.splitlines():
        w = line.split()
        if w[-2:] == ["-j", "MASQUERADE"] and "-s" in w and "!" in w and "-o" in w:
            found.append((w[w.index("-s") + 1], w[w.index("-o") + 1]))
    return found
