"""Inside the cage, before any model code runs: resource limits and a seccomp filter.

This module runs in the sandbox process itself (worker.sandbox.child calls
`confine` first thing). The namespaces that bubblewrap sets up are the fence
(no network, no view of the host's files or processes); these are the locks
behind it: the process cannot grow past its memory, CPU or file-size limits,
cannot start another program or process, and cannot open a socket or use the
kernel interfaces that sandbox escapes go through. A seccomp filter cannot be
lifted once loaded, and every thread torch starts later inherits it.
"""

from __future__ import annotations

import ctypes
import errno
import resource
from dataclasses import dataclass

# Syscalls a model never needs. Each answers EPERM, so Python code sees a plain
# PermissionError instead of the process dying mid-write of a protocol line.
DENIED_SYSCALLS = (
    # new programs and processes (threads are allowed: see the clone rule)
    "execve", "execveat", "fork", "vfork",
    # the network, and local sockets to anything that might be reachable
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    # other processes' memory and tracing
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_open", "pidfd_getfd", "kcmp",
    # namespaces and mounts: what an escape needs
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "mount_setattr", "move_mount",
    "open_tree", "fsopen", "fsconfig", "fsmount", "fspick",
    # kernel interfaces with a history of exploits, none of which inference uses
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "open_by_handle_at", "name_to_handle_at", "personality",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
    "swapon", "swapoff", "acct", "quotactl", "lookup_dcookie", "syslog", "vhangup",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
)

_CLONE_THREAD = 0x00010000
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_CMP_MASKED_EQ = 7


def _scmp_act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class ConfineError(RuntimeError):
    """The cage's inner locks could not be set: the sandbox must not run a model."""


@dataclass(frozen=True)
class Limits:
    """The resource limits of one sandbox process."""

    memory_bytes: int | None
    cpu_seconds: int
    file_bytes: int
    open_files: int = 256


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def set_limits(limits: Limits) -> None:
    """Lower this process's rlimits; the hard limits make them final."""
    pairs = [
        # The soft CPU limit sends SIGXCPU, which the worker reads as "CPU time used up";
        # the hard one, a little later, kills a process that ignores it.
        (resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5)),
        (resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes)),
        (resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files)),
        (resource.RLIMIT_CORE, (0, 0)),
    ]
    if limits.memory_bytes is not None:
        pairs.append((resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes)))
    for which, value in pairs:
        resource.setrlimit(which, value)


def load_seccomp() -> None:
    """Install the seccomp filter: DENIED_SYSCALLS and process-creating clone() answer EPERM."""
    try:
        # By soname: find_library would run ldconfig, a new process the cage does not allow.
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as exc:
        raise ConfineError("libseccomp is not installed (Debian: libseccomp2)") from exc
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    context = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not context:
        raise ConfineError("seccomp_init failed")
    try:
        deny = _scmp_act_errno(errno.EPERM)
        for syscall in DENIED_SYSCALLS:
            number = lib.seccomp_syscall_resolve_name(syscall.encode())
            if number < 0:  # not a syscall on this architecture
                continue
            _add(lib, context, deny, number, None)
        # clone() makes a thread when CLONE_THREAD is set, a new process otherwise.
        clone = lib.seccomp_syscall_resolve_name(b"clone")
        _add(lib, context, deny, clone, _ArgCmp(0, _SCMP_CMP_MASKED_EQ, _CLONE_THREAD, 0))
        # clone3 passes its flags in memory, out of the filter's reach; ENOSYS makes the
        # C library fall back to clone(), which the rule above can inspect.
        clone3 = lib.seccomp_syscall_resolve_name(b"clone3")
        if clone3 >= 0:
            _add(lib, context, _scmp_act_errno(errno.ENOSYS), clone3, None)
        if lib.seccomp_load(context) != 0:
            raise ConfineError("seccomp_load failed")
    finally:
        lib.seccomp_release(context)


def _add(lib: ctypes.CDLL, context: int, action: int, number: int, condition: _ArgCmp | None) -> None:
    conditions = (_ArgCmp * 1)(condition) if condition is not None else None
    if lib.seccomp_rule_add_array(context, action, number, 1 if condition else 0, conditions) != 0:
        raise ConfineError(f"seccomp rule for syscall {number} could not be added")


def confine(limits: Limits, seccomp: bool = True) -> None:
    """Set the limits, then the filter; raises ConfineError if either cannot be set."""
    try:
        set_limits(limits)
    except (OSError, ValueError) as exc:
        raise ConfineError(f"resource limits could not be set: {exc}") from exc
    if seccomp:
        load_seccomp()
