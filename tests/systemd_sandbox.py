"""Run a command under the seccomp filters a systemd unit file asks for, without systemd: the tests run the
agent this way to show that the hardening in systemd/headwater.service leaves it working (grpcio, the
compressors and the disk queue under MemoryDenyWriteExecute and the system call allow-list).

    python tests/systemd_sandbox.py --unit systemd/headwater.service [--strict] -- python -m agent run -c x.yaml

What it reproduces, with libseccomp (the library systemd itself uses) loaded through ctypes, from the options
in the unit's [Service] section; each filter is the one systemd 252 builds (src/shared/seccomp-util.c):
- SystemCallFilter= allow-list and `~` removals, groups expanded by `systemd-analyze syscall-filter` (so the
  lists are this systemd's own), plus @default as systemd adds it; unlisted calls fail with
  SystemCallErrorNumber=, or with `--strict` kill the process, so any call outside the list is seen;
- SystemCallArchitectures=native (only the native ABI is in the filter; others kill);
- MemoryDenyWriteExecute=yes: mmap with PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect adding PROT_EXEC and
  shmat with SHM_EXEC fail with EPERM;
- RestrictNamespaces=yes: unshare and setns fail with EPERM, clone with a CLONE_NEW* flag fails with EPERM,
  clone3 fails with ENOSYS (its flags are out of reach of seccomp, so libc falls back to clone);
- RestrictAddressFamilies=: socket() of any other family fails with EAFNOSUPPORT;
- LockPersonality=yes: personality() with anything but PER_LINUX fails with EPERM.
What it does not: mount namespaces (ProtectSystem, ProtectProc, ProcSubset, PrivateTmp...), users, cgroups.
The tests run the rest (no capabilities, ProcSubset) with setpriv and unshare around this script.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_NE, SCMP_CMP_EQ, SCMP_CMP_MASKED_EQ = 1, 4, 7
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000
CLONE_NEW_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080)
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
INSTALL_HINT = "install systemd (apt-get install systemd), which brings systemd-analyze and libseccomp2"


def scmp_act_errno(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _libseccomp() -> ctypes.CDLL:
    global _LIB
    if _LIB is None:
        name = ctypes.util.find_library("seccomp")  # runs ldconfig: before any filter is loaded
        if name is None:
            raise SystemExit(f"libseccomp not found: {INSTALL_HINT}")
        _LIB = ctypes.CDLL(name, use_errno=True)
    return _LIB


_LIB: ctypes.CDLL | None = None


class Seccomp:
    """One libseccomp filter context; `load()` installs it in this process (filters stack, the strictest
    action wins, as with systemd's several filters)."""

    def __init__(self, default_action: int) -> None:
        self.lib = _libseccomp()
        self.lib.seccomp_init.restype = ctypes.c_void_p
        self.lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                                    ctypes.POINTER(ArgCmp)]
        self.lib.seccomp_load.argtypes = [ctypes.c_void_p]
        self.lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        self.ctx = self.lib.seccomp_init(default_action)
        if not self.ctx:
            raise SystemExit("seccomp_init failed")

    def number(self, syscall: str) -> int | None:
        nr = self.lib.seccomp_syscall_resolve_name(syscall.encode())
        return None if nr < 0 else nr  # a name the running libseccomp does not know (other arch, newer call)

    def rule(self, action: int, syscall: str, *comparisons: tuple[int, int, int, int]) -> None:
        nr = self.number(syscall)
        if nr is None:
            return
        array = (ArgCmp * max(1, len(comparisons)))(*[ArgCmp(*c) for c in comparisons])
        rc = self.lib.seccomp_rule_add_array(self.ctx, action, nr, len(comparisons), array)
        if rc < 0 and rc != -errno.EEXIST:
            raise SystemExit(f"seccomp rule for {syscall} failed: {os.strerror(-rc)}")

    def load(self) -> None:
        rc = self.lib.seccomp_load(self.ctx)
        if rc < 0:
            raise SystemExit(f"seccomp_load failed: {os.strerror(-rc)}")


def service_options(unit: Path) -> dict[str, list[str]]:
    """Every `Key=value` of the [Service] section, values of repeated keys in order."""
    options: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]" and "=" in line:
            key, value = line.split("=", 1)
            options.setdefault(key.strip(), []).append(value.strip())
    return options


def syscall_groups() -> dict[str, list[str]]:
    """`systemd-analyze syscall-filter`: each @group and its members (calls and nested groups)."""
    text = subprocess.run([SYSTEMD_ANALYZE, "syscall-filter", "--no-pager"], check=True, capture_output=True,
                          text=True).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if re.match(r"^@[\w-]+$", line):
            current = groups.setdefault(line, [])
        elif line.startswith("    ") and current is not None and not line.strip().startswith("#"):
            current.append(line.strip())
        elif not line.strip():
            current = None
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    calls: set[str] = set()
    for name in names:
        if name.startswith("@"):
            if name not in groups:
                raise SystemExit(f"unknown system call group {name}")
            calls |= expand(groups[name], groups)
        else:
            calls.add(name.split(":", 1)[0])
    return calls


def allowed_syscalls(filters: list[str], groups: dict[str, list[str]]) -> set[str] | None:
    """The allow-list SystemCallFilter= lines add up to (None: no allow-list), as systemd merges them."""
    allowed: set[str] | None = None
    for value in filters:
        invert = value.startswith("~")
        names = value.lstrip("~").split()
        if allowed is None:
            if invert:
                return None  # a deny-list unit: not what ours is; refuse rather than guess
            allowed = expand(["@default"], groups)
        if invert:
            allowed -= expand(names, groups)
        else:
            allowed |= expand(names, groups)
    return allowed


def apply(options: dict[str, list[str]], strict: bool) -> list[str]:
    """Load the filters the options ask for into this process; returns what was applied, for the log."""
    applied = []
    yes = lambda key: options.get(key, ["no"])[-1] in ("yes", "true", "1", "on")  # noqa: E731
    allow_list: Seccomp | None = None
    if options.get("SystemCallFilter"):
        groups = syscall_groups()
        allowed = allowed_syscalls(options["SystemCallFilter"], groups)
        if allowed is None:
            raise SystemExit("only allow-list SystemCallFilter= is reproduced")
        error = options.get("SystemCallErrorNumber", ["kill"])[-1]
        action = SCMP_ACT_KILL_PROCESS if strict or error == "kill" else scmp_act_errno(getattr(errno, error))
        allow_list = Seccomp(action)  # only the native architecture is added: SystemCallArchitectures=native
        for call in sorted(allowed):
            allow_list.rule(SCMP_ACT_ALLOW, call)
        applied.append(f"SystemCallFilter ({len(allowed)} calls allowed, others {'kill' if strict else error})")
    if yes("MemoryDenyWriteExecute"):
        f = Seccomp(SCMP_ACT_ALLOW)
        eperm = scmp_act_errno(errno.EPERM)
        wx = PROT_WRITE | PROT_EXEC
        f.rule(eperm, "mmap", (2, SCMP_CMP_MASKED_EQ, wx, wx))
        f.rule(eperm, "mprotect", (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        f.rule(eperm, "pkey_mprotect", (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        f.rule(eperm, "shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
        f.load()
        applied.append("MemoryDenyWriteExecute")
    if yes("RestrictNamespaces"):
        f = Seccomp(SCMP_ACT_ALLOW)
        eperm = scmp_act_errno(errno.EPERM)
        f.rule(eperm, "unshare")
        f.rule(eperm, "setns")
        for flag in CLONE_NEW_FLAGS:
            f.rule(eperm, "clone", (0, SCMP_CMP_MASKED_EQ, flag, flag))
        f.rule(scmp_act_errno(errno.ENOSYS), "clone3")
        f.load()
        applied.append("RestrictNamespaces")
    families = options.get("RestrictAddressFamilies")
    if families:
        allowed_families = {getattr(socket, name) for name in families[-1].split()}
        f = Seccomp(SCMP_ACT_ALLOW)
        for family in range(64):
            if family not in allowed_families:
                f.rule(scmp_act_errno(errno.EAFNOSUPPORT), "socket", (0, SCMP_CMP_EQ, family, 0))
        f.load()
        applied.append(f"RestrictAddressFamilies ({families[-1]})")
    if yes("LockPersonality"):
        f = Seccomp(SCMP_ACT_ALLOW)  # systemd: any personality() but the current one (PER_LINUX) is refused
        f.rule(scmp_act_errno(errno.EPERM), "personality", (0, SCMP_CMP_NE, 0, 0))
        f.load()
        applied.append("LockPersonality")
    if allow_list is not None:  # last: it does not allow seccomp() itself, which loading the others needs
        allow_list.load()
    return applied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unit", required=True, type=Path)
    parser.add_argument("--strict", action="store_true", help="kill the process on a call outside the allow-list")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("a command to run is required after --")
    applied = apply(service_options(args.unit), args.strict)
    print(f"systemd_sandbox: {', '.join(applied) or 'nothing'} from {args.unit}", file=sys.stderr, flush=True)
    os.execvp(command[0], command)
    return 127


if __name__ == "__main__":
    sys.exit(main())
