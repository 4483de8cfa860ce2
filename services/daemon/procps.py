"""docker top's table, read from /proc: ps -ef's columns by default, or those ``ps_args`` asks for
(``-o pid,comm``, ``-eo user,pid,args``, ``aux``), as dockerd shows the output of the host's ps for
the container's processes. Blocking: call in a thread."""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import InvalidArgument

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
DEFAULT_COLUMNS = ["uid=UID", "pid", "ppid", "c", "stime", "tty=TTY", "time", "cmd"]  # ps -ef
BSD_COLUMNS = ["user", "pid", "%cpu", "%mem", "vsz", "rss", "tty=TTY", "stat", "start", "bsdtime", "command"]  # aux
X_COLUMNS = ["pid", "tty=TTY", "stat", "bsdtime", "command"]  # ps x


@dataclass
class Proc:
    pid: int
    stat: list[str]  # /proc/pid/stat after the command's parentheses
    comm: str
    uid: int
    args: str
    started: float
    mem_total: int

    @property
    def cpu_ticks(self) -> int:
        return int(self.stat[11]) + int(self.stat[12])


def _clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _state(p: Proc) -> str:
    """ps's STAT: the state, then s (session leader), l (threads), < or N (nice), + (foreground)."""
    nice, tty, pgrp, tpgid = int(p.stat[16]), int(p.stat[4]), p.stat[2], p.stat[5]
    return (p.stat[0] + ("<" if nice < 0 else "N" if nice > 0 else "") + ("s" if str(p.pid) == p.stat[3] else "")
            + ("l" if int(p.stat[17]) > 1 else "") + ("+" if tty and pgrp == tpgid else ""))


def _percent_cpu(p: Proc) -> float:
    return 100 * p.cpu_ticks / CLOCK_TICKS / max(time.time() - p.started, 1.0)


# keyword -> (header, value)
KEYWORDS: dict[str, tuple[str, Callable[[Proc], str]]] = {
    "pid": ("PID", lambda p: str(p.pid)),
    "ppid": ("PPID", lambda p: p.stat[1]),
    "pgid": ("PGID", lambda p: p.stat[2]),
    "sid": ("SID", lambda p: p.stat[3]),
    "uid": ("UID", lambda p: str(p.uid)),
    "user": ("USER", lambda p: _user(p.uid)),
    "comm": ("COMMAND", lambda p: p.comm),
    "args": ("COMMAND", lambda p: p.args),
    "command": ("COMMAND", lambda p: p.args),
    "cmd": ("CMD", lambda p: p.args),
    "tty": ("TT", lambda p: "?" if int(p.stat[4]) == 0 else f"pts/{int(p.stat[4]) & 0xff}"),
    "stat": ("STAT", _state),
    "ni": ("NI", lambda p: p.stat[16]),
    "nice": ("NI", lambda p: p.stat[16]),
    "nlwp": ("NLWP", lambda p: p.stat[17]),
    "vsz": ("VSZ", lambda p: str(int(p.stat[20]) // 1024)),
    "rss": ("RSS", lambda p: str(int(p.stat[21]) * PAGE // 1024)),
    "%cpu": ("%CPU", lambda p: f"{_percent_cpu(p):.1f}"),
    "pcpu": ("%CPU", lambda p: f"{_percent_cpu(p):.1f}"),
    "c": ("C", lambda p: str(int(_percent_cpu(p)))),
    "%mem": ("%MEM", lambda p: f"{100 * int(p.stat[21]) * PAGE / max(p.mem_total, 1):.1f}"),
    "pmem": ("%MEM", lambda p: f"{100 * int(p.stat[21]) * PAGE / max(p.mem_total, 1):.1f}"),
    "time": ("TIME", lambda p: _clock(p.cpu_ticks // CLOCK_TICKS)),
    "bsdtime": ("TIME", lambda p: f"{p.cpu_ticks // CLOCK_TICKS // 60}:{p.cpu_ticks // CLOCK_TICKS % 60:02d}"),
    "etime": ("ELAPSED", lambda p: _clock(int(time.time() - p.started))),
    "stime": ("STIME", lambda p: time.strftime("%H:%M", time.localtime(p.started))),
    "start": ("START", lambda p: time.strftime("%H:%M", time.localtime(p.started))),
}


def columns(ps_args: str) -> list[str]:
    """The keywords (``kw`` or ``kw=HEADER``) ``ps_args`` selects; ps's selection options (-e, -A, a, x)
    change nothing: every process of the container is shown."""
    words = ps_args.split()
    if not words or all(w.lstrip("-") in ("e", "A", "ef", "f", "eF") for w in words):
        return list(DEFAULT_COLUMNS)
    picked: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        flag = word.lstrip("-")
        if flag in ("o", "eo", "Ao") or word in ("-o", "o", "-eo", "--format"):
            if i + 1 >= len(words):
                raise InvalidArgument("ps: error: format specification must follow -o")
            picked += words[i + 1].split(",")
            i += 2
            continue
        if flag.startswith(("o", "eo")) and "," in flag:
            picked += flag.split("o", 1)[1].split(",")
        elif set(flag) <= set("auxwefA"):
            if not picked and (word == flag or "u" in flag):  # BSD options (no dash): aux, x
                picked = list(BSD_COLUMNS if "u" in flag else X_COLUMNS)
        else:
            raise InvalidArgument(f"ps: error: unsupported option {word}")
        i += 1
    return picked or list(DEFAULT_COLUMNS)


def _read(pid: int, boot: float, mem_total: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None  # exited meanwhile
    fields = stat[stat.rindex(")") + 2:].split()
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    uid = int(next((line.split()[1] for line in status.splitlines() if line.startswith("Uid:")), "0"))
    args = cmdline.replace(b"\0", b" ").decode(errors="replace").strip() or f"[{comm}]"
    return Proc(pid, fields, comm, uid, args, boot + int(fields[19]) / CLOCK_TICKS, mem_total)


def _mem_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def table(pids: list[int], ps_args: str = "") -> tuple[list[str], list[list[str]]]:
    """(titles, rows) for ``pids``; a table without a PID column is dockerd's refusal."""
    wanted = columns(ps_args)
    keys, titles = [], []
    for item in wanted:
        key, eq, header = item.partition("=")
        if key.lower() not in KEYWORDS:
            raise InvalidArgument(f'ps: error: unknown user-defined format specifier "{key}"')
        keys.append(key.lower())
        titles.append(header if eq else KEYWORDS[key.lower()][0])
    if "pid" not in keys:
        raise InvalidArgument("Couldn't find PID field in ps output")
    boot = time.time() - float(Path("/proc/uptime").read_text().split()[0])
    mem_total = _mem_total()
    rows = []
    for pid in sorted(pids):
        proc = _read(pid, boot, mem_total)
        if proc is not None:
            rows.append([KEYWORDS[k][1](proc) for k in keys])
    # ps -ef names root by name in its UID column
    if wanted == DEFAULT_COLUMNS:
        for row in rows:
            row[0] = "root" if row[0] == "0" else row[0]
    return titles, rows
