"""Networking of one test stack: its own default bridge and subnet, and everything of it removed afterwards."""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from pathlib import Path

from services.common.paths import Paths


def network_env(prefix: Path) -> dict[str, str]:
    """``SKIFF_BRIDGE_NAME`` and ``SKIFF_DEFAULT_SUBNET`` unique to the stack (never skiff0, never 172.17/16)."""
    from services.daemon.network.ipam import host_networks

    marker = prefix / ".netenv"
    if marker.exists():
        name, subnet = marker.read_text().split()
        # "auto": no default subnet given, the engine chooses (or adopts its bridge device's address)
        return {"SKIFF_BRIDGE_NAME": name} | ({"SKIFF_DEFAULT_SUBNET": subnet} if subnet != "auto" else {})
    name = "skt" + hashlib.sha256(str(prefix).encode()).hexdigest()[:10]
    busy = host_networks()
    for _ in range(200):
        candidate = ipaddress.IPv4Network(f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}.0/24")
        if not any(candidate.overlaps(b) for b in busy):
            break
    else:
        raise AssertionError("no free 10.x subnet for the test stack")
    prefix.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{name} {candidate}")
    return {"SKIFF_BRIDGE_NAME": name, "SKIFF_DEFAULT_SUBNET": str(candidate)}


def cgroup_parent(prefix: Path) -> str:
    """The stack's own cgroup parent (the daemon's SKIFF_CGROUP_PARENT), removed at teardown."""
    return "skiff-e2e-" + hashlib.sha256(str(prefix).encode()).hexdigest()[:10]


def remove_cgroup_parent(prefix: Path) -> list[str]:
    """rmdir the parent in every hierarchy; returns the folders that could not go (still in use)."""
    left = []
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        folder = hierarchy / cgroup_parent(prefix)
        if folder.is_dir():
            try:
                folder.rmdir()
            except OSError:
                left.append(str(folder))
    return left


def cleanup_networks(paths: Paths) -> None:
    """Every bridge, veth, netns, address and rule of this stack's daemon: gone (the daemon is stopped)."""
    from services.daemon.network.ipam import Ipam
    from services.daemon.network.reconcile import reconcile_sync

    folder = paths.daemon_lib / "network" / "ipam"
    if folder.is_dir() or paths.netns.is_dir():
        reconcile_sync(live_containers=set(), netns_dir=paths.netns, ipam=Ipam(folder), live_networks=set())


# ---- a UDP DNS server for the tests ---------------------------------------------------------------
# Debian's busybox-static 1.35 has no UDP server applet at all (no dnsd, udpsvd, ntpd or tftpd; its nc
# has no -u), so the UDP tests bring their own: a tiny authoritative DNS server in C, linked
# statically so that it runs in the busybox image, answering A queries for the names of a
# ``name address`` file (busybox dnsd's format), NXDOMAIN for the others, and always to the sender.
DNSD_C = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

static struct { char name[256]; unsigned char ip[4]; } recs[64];
static int nrec;

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: dnsd PORT CONF\n"); return 2; }
    FILE *f = fopen(argv[2], "r");
    if (!f) { perror(argv[2]); return 1; }
    char name[256], ip[64];
    while (nrec < 64 && fscanf(f, "%255s %63s", name, ip) == 2)
        if (inet_pton(AF_INET, ip, recs[nrec].ip) == 1) strcpy(recs[nrec++].name, name);
    fclose(f);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[1]));
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0) { perror("bind"); return 1; }
    fprintf(stderr, "dnsd: udp port %s, %d names\n", argv[1], nrec);
    for (;;) {
        unsigned char q[512], r[512];
        struct sockaddr_in from;
        socklen_t fromlen = sizeof from;
        ssize_t n = recvfrom(s, q, sizeof q, 0, (struct sockaddr *)&from, &fromlen);
        if (n < 12 || (q[2] & 0x80)) continue;
        size_t p = 12, len = 0;
        char qn[256];
        int ok = 1;
        while (p < (size_t)n && q[p]) {
            size_t l = q[p];
            if (l > 63 || p + 1 + l > (size_t)n || len + l + 2 > sizeof qn) { ok = 0; break; }
            if (len) qn[len++] = '.';
            memcpy(qn + len, q + p + 1, l);
            len += l;
            p += 1 + l;
        }
        if (!ok || p + 5 > (size_t)n) continue;
        qn[len] = 0;
        unsigned qtype = (unsigned)q[p + 1] << 8 | q[p + 2];
        p += 5;
        memcpy(r, q, p);
        r[2] = 0x84 | (q[2] & 0x01);  /* response, authoritative, RD copied */
        r[3] = 0x80;                  /* RA, NOERROR */
        memset(r + 4, 0, 8);
        r[5] = 1;
        int found = -1;
        for (int i = 0; i < nrec; i++) if (strcasecmp(recs[i].name, qn) == 0) found = i;
        if (found < 0) {
            r[3] |= 3;  /* NXDOMAIN */
        } else if (qtype == 1) {
            static const unsigned char rr[] = {0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4};
            memcpy(r + p, rr, sizeof rr);
            memcpy(r + p + sizeof rr, recs[found].ip, 4);
            p += sizeof rr + 4;
            r[7] = 1;
        }
        sendto(s, r, p, 0, (struct sockaddr *)&from, fromlen);
    }
}
"""
DNSD_IMAGE = "skiff-test-dnsd:latest"


def build_dnsd(workdir: Path) -> Path:
    """The server above, compiled static (gcc and libc6-dev's libc.a); a failure here fails the test."""
    import shutil
    import subprocess

    out = workdir / "dnsd"
    if out.exists():
        return out
    gcc = shutil.which("gcc")
    assert gcc is not None, "gcc is needed to build the test's UDP DNS server (busybox-static has none)"
    source = workdir / "dnsd.c"
    source.write_text(DNSD_C)
    done = subprocess.run(
        [gcc, "-static", "-Os", "-o", str(out), str(source)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"gcc -static dnsd.c: {done.stderr}"
    return out


def dnsd_archive(workdir: Path, names: dict[str, str]) -> Path:
    """A ``docker save`` archive of busybox plus /bin/dnsd and /etc/dnsd.conf (``name address`` lines)."""

    from tests.support.oci_image import (
        Entry,
        build_image,
        busybox_layer,
        docker_save_archive,
        make_layer,
        tar_of_entries,
    )

    conf = "".join(f"{name} {ip}\n" for name, ip in names.items()).encode()
    extra = make_layer(
        tar_of_entries(
            [
                Entry("bin/dnsd", data=build_dnsd(workdir).read_bytes(), mode=0o755),
                Entry("etc/dnsd.conf", data=conf),
            ]
        )
    )
    image = build_image([busybox_layer(workdir), extra], cmd=["/bin/dnsd", "53", "/etc/dnsd.conf"])
    return docker_save_archive(image, DNSD_IMAGE, workdir / "dnsd.tar")


def dns_query(name: str, qid: int) -> bytes:
    """A standard recursive-desired query for ``name`` IN A."""
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split(".")) + b"\0"
    return qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + labels + b"\x00\x01\x00\x01"


def dns_a_answers(reply: bytes, qid: int) -> tuple[int, list[str]]:
    """(rcode, the A records' addresses) of a reply to query ``qid``; asserts it is that reply."""
    import socket
    import struct

    assert len(reply) >= 12 and int.from_bytes(reply[:2], "big") == qid, reply
    flags, qdcount, ancount = struct.unpack("!HHH", reply[2:8])
    assert flags & 0x8000, "not a response"
    p = 12
    for _ in range(qdcount):  # skip the question(s): labels, then type and class
        while reply[p]:
            p += 1 + reply[p]
        p += 5
    found = []
    for _ in range(ancount):
        if reply[p] & 0xC0 == 0xC0:
            p += 2
        else:
            while reply[p]:
                p += 1 + reply[p]
            p += 1
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", reply[p : p + 10])
        p += 10
        if rtype == 1 and rdlen == 4:
            found.append(socket.inet_ntoa(reply[p : p + 4]))
        p += rdlen
    return flags & 0xF, found
