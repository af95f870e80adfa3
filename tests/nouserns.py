"""Run a command on what looks like a machine without user namespaces.

``python tests/nouserns.py CMD ARGS...`` installs a seccomp filter, then execs CMD.
The filter makes ``unshare`` and ``clone`` with CLONE_NEWUSER fail with EPERM, as
Docker's default seccomp profile and Ubuntu 23.10+'s AppArmor rule do, so the tests
can check that ci-runner's sandbox probe falls back to Landlock without such a
machine at hand. ``clone3`` fails with ENOSYS: its flags live in a struct BPF cannot
read, and ENOSYS makes libc fall back to ``clone``, whose flags it can. The filter
is inherited by every child and cannot be removed (no_new_privs is set first).

Root needs no user namespace for a sandbox, so for root the filter refuses every
new namespace, as Docker's default profile does in a container without
CAP_SYS_ADMIN: the machine where a root ci-runner has no bubblewrap either.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6].
_NR = 0
_ARCH = 4
_ARG0_LOW = 16  # little-endian: the low 32 bits of args[0] (where the flags are)

_CLONE_NEWUSER = 0x10000000
# NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
_CLONE_NEW_ANY = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 \
    | 0x40000000
_X32_SYSCALL_BIT = 0x40000000
# arch -> (AUDIT_ARCH_*, unshare, clone, clone3)
_ARCHES = {
    "x86_64": (0xC000003E, 272, 56, 435),
    "aarch64": (0xC00000B7, 97, 220, 435),
}

_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


class _SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter)))


def _program() -> list[tuple[int, int, int, int]]:
    machine = platform.machine()
    if machine not in _ARCHES:
        sys.exit(f"nouserns.py: no syscall numbers for {machine}")
    audit_arch, unshare, clone, clone3 = _ARCHES[machine]
    eperm = _RET_ERRNO | errno.EPERM
    return [
        (_LD_W_ABS, 0, 0, _ARCH),
        # Another ABI (i386 via int 0x80) has other numbers: refuse it all.
        (_JEQ_K, 1, 0, audit_arch),
        (_RET_K, 0, 0, eperm),
        (_LD_W_ABS, 0, 0, _NR),
        # x32 syscalls share x86_64's arch value but set this bit: refuse them.
        (_JGE_K, 0, 1, _X32_SYSCALL_BIT),
        (_RET_K, 0, 0, eperm),
        (_JEQ_K, 0, 1, clone3),
        (_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS),
        (_JEQ_K, 1, 0, unshare),
        (_JEQ_K, 0, 3, clone),
        (_LD_W_ABS, 0, 0, _ARG0_LOW),
        (_JSET_K, 0, 1, _CLONE_NEW_ANY if os.geteuid() == 0 else _CLONE_NEWUSER),
        (_RET_K, 0, 0, eperm),
        (_RET_K, 0, 0, _RET_ALLOW),
    ]


def install() -> None:
    """Install the filter on this process (and so on all it later starts)."""
    program = _program()
    filters = (_SockFilter * len(program))(*(_SockFilter(*ins) for ins in program))
    prog = _SockFprog(len(program), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    for args in (
        (_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
        (_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0),
    ):
        if libc.prctl(*(ctypes.c_ulong(a) for a in args)) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"prctl({args[0]}): {os.strerror(code)}")


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python tests/nouserns.py CMD ARGS...")
    install()
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
