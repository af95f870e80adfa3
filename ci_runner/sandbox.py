"""Turns a sandbox policy (data) into an OS sandbox for a pipeline's processes.

A run's commands should see its worktree, its toolchains and little else: not
CI_RUNNER_HOME (other runs, the database, secrets files), not the host's /tmp or
/run (docker.sock, agents' sockets), not other processes. One ``Policy`` says what
is read-only, writable or mounted elsewhere and whether there is a network; this
module turns it into the strongest sandbox the machine allows, and ``probe`` says
which level that is and why:

- ``bwrap``: bubblewrap in new user, mount, pid, ipc, uts, cgroup (and network)
  namespaces. The file system is rebuilt from nothing, so what is not asked for
  does not exist. ``bwrap_argv`` is pure, so policies are tested without processes.
- ``landlock``: when user namespaces are refused (Docker's seccomp profile, Ubuntu
  23.10+'s AppArmor rule), ``landlock_restrict`` confines a forked child to the
  same paths with the kernel's Landlock LSM. Weaker: paths are refused rather than
  absent, and UNIX sockets, UDP and the view of other processes are not covered.
- ``off``: neither is available; commands run unconfined and the reason says so.

When ci-runner runs as root, sandboxed processes never keep root's powers. Under
bubblewrap they run as an unprivileged user (``sandbox_ids``): root's bwrap builds
the sandbox without a user namespace (a user namespace owned by root would map
the sandbox's uid onto root's on the host) and ``setpriv`` inside drops to that
user with no capabilities and no_new_privs. Under Landlock, which is entered by
the process itself after ``exec`` of the interpreter, the uid stays 0 but every
capability is dropped for good (``drop_capabilities``): root's toolchains (a
0700 /root) keep working, and without CAP_PERFMON, CAP_DAC_OVERRIDE or
CAP_SYS_MODULE uid 0 is one more user whose files Landlock fences.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import grp
import importlib.util
import os
import platform
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ci_runner.errors import UsageError

__all__ = [
    "Level",
    "Policy",
    "bwrap_argv",
    "etc_allowlist",
    "landlock_abi",
    "landlock_defaults",
    "landlock_restrict",
    "probe",
    "python_paths",
    "sandbox_ids",
    "toolchain_paths",
]


@dataclass(frozen=True)
class Policy:
    """What a sandboxed process may see. Paths are mounted where given (not resolved).

    ``uid``/``gid``: who the sandbox runs as. Not root: the ids inside its user
    namespace (mapped onto the caller's). Root: the unprivileged user ``setpriv``
    drops to inside, for real (see ``bwrap_argv``).
    """

    ro: tuple[Path, ...] = ()  # bind read-only at the same path
    rw: tuple[Path, ...] = ()  # bind read-write at the same path
    # (host source, path inside) read-write: private dirs mounted elsewhere, e.g. a
    # per-run scratch dir at /tmp or at $HOME.
    binds: tuple[tuple[Path, Path], ...] = ()
    network: bool = True  # False: a new network namespace with only loopback
    uid: int | None = None  # None: the caller's own
    gid: int | None = None
    hostname: str = "ci-runner"


# /etc is an allowlist, not the host's /etc with holes punched in it: besides
# shadow, gshadow and sudoers, /etc holds ssh host keys, Kerberos keytabs, saved
# Wi-Fi passwords, docker/containerd/registry credentials, pip.conf and npmrc with
# index tokens, and machine-id (a stable fingerprint). A denylist has to know them
# all; an allowlist only has to know what programs read to run, resolve names and
# verify TLS. It is kept short because each entry that exists is one more read-only
# mount, about 70 us of every sandbox's start (this list: ~1.7 ms; the whole /etc
# would be one mount). Shell start-up files, terminfo, perl's and the locale aliases
# are left out; a step that needs one (or /etc/java-17-openjdk) gets it via Policy.ro.
_ETC_ALLOWED = (
    # users, groups and name resolution (getpwuid, getaddrinfo, getservbyname)
    "passwd", "group", "nsswitch.conf", "hosts", "resolv.conf", "host.conf", "gai.conf",
    "services", "protocols",
    # TLS trust stores (Debian, Fedora) and the dynamic linker
    "ssl", "ca-certificates", "ca-certificates.conf", "pki", "crypto-policies",
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives",
    # time zone (Debian's JVMs read /etc/timezone), content types, the distribution
    "localtime", "timezone", "mime.types", "os-release",
    # git's system config
    "gitconfig",
)
# Globbed in /etc (python3, python3.11, ...), so new versions need no change here.
_ETC_GLOBS = ("python*", "java-*")

# Sources and destinations a policy may never name: mounting / or an ancestor of
# these would bring back what the sandbox hides (/run holds docker.sock and the
# users' runtime dirs with their agents' sockets). Anything under /run is refused
# too; binds *under* /tmp are fine (a worktree), /tmp itself is not.
_TMP = Path("/tmp")  # noqa: S108  (the host path we hide, never one we write to)
_NEVER_UNDER = (Path("/run"), Path("/var/run"))
_NEVER_AT = (_TMP, Path("/var/tmp"), Path("/proc"), Path("/sys"), Path("/dev"))  # noqa: S108
_BASE_MOUNTS = (Path("/usr"), Path("/etc"))
_KERNEL_DIRS = (Path("/proc"), Path("/sys"), Path("/dev"))
# The merged-/usr links (or real dirs on older systems), in this order.
_ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# PATH entries and Python dirs under these are already in every sandbox.
_SYSTEM_DIRS = (Path("/usr"), Path("/bin"), Path("/sbin"), Path("/lib"), Path("/lib64"))
# Never a read-only prefix, whatever the caller forbids besides.
_ALWAYS_FORBIDDEN = (Path("/"), *_NEVER_AT, *_NEVER_UNDER, Path("/home"), Path("/etc"))


def etc_allowlist() -> list[Path]:
    """The /etc entries a sandbox gets (those that exist), for bwrap and Landlock alike."""
    etc = Path("/etc")
    found = [etc / name for name in _ETC_ALLOWED]
    for pattern in _ETC_GLOBS:
        found.extend(sorted(etc.glob(pattern)))
    return [p for p in found if os.path.lexists(p)]


def bwrap_argv(policy: Policy, *, bwrap: str | None = None) -> list[str]:
    """Pure: the argv prefix ending in '--' ; the caller appends the command.

    bubblewrap mounts left to right, so the order below is the design: the system
    (read-only /usr, its links, /proc, /dev, the /etc allowlist), a private /tmp,
    then the policy's mounts, parents before children (a read-only prefix inside a
    writable home works, and the reverse), and last the root made read-only so
    nothing can be written outside the policy's writable paths, /tmp and /dev/shm.

    Inherited descriptors pass through bwrap to the command (bwrap has no option to
    close them): the pipeline process's pipe and broker socket rely on that.

    bwrap (``bwrap=None``: found on this process's PATH) and, as root, setpriv (found
    in /usr/bin, /bin, /usr/sbin, /sbin) are absolute paths: a step's environment
    may set PATH to its worktree, and a name would then be looked up there, by the
    launcher for bwrap and by root's bwrap inside the sandbox for setpriv, and run as
    root with every capability.
    """
    if bwrap is None:
        bwrap = shutil.which("bwrap") or "/usr/bin/bwrap"
    mounts = _policy_mounts(policy)
    as_root = os.geteuid() == 0 and policy.uid is not None and policy.uid != 0
    argv = [bwrap]
    if not as_root:
        argv.append("--unshare-user")
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not policy.network:
        # A new network namespace has only a loopback, which bwrap brings up.
        argv.append("--unshare-net")
    argv += [
        # Dies with its parent: a crashed driver leaves no sandboxed orphans.
        "--die-with-parent",
        # A new session: no TIOCSTI into the caller's terminal.
        "--new-session",
    ]
    if not as_root:
        uid = os.getuid() if policy.uid is None else policy.uid
        gid = os.getgid() if policy.gid is None else policy.gid
        argv += ["--cap-drop", "ALL", "--uid", str(uid), "--gid", str(gid)]
    argv += ["--hostname", policy.hostname, "--ro-bind", "/usr", "/usr"]
    for name in _ROOT_LINKS:
        host = Path("/") / name
        if host.is_symlink():
            argv += ["--symlink", str(host.readlink()), str(host)]
        elif host.is_dir():
            argv += ["--ro-bind", str(host), str(host)]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    # Root's bwrap makes its tmpfs dirs root's and 0755: the sandbox user could write
    # to neither /tmp nor /dev/shm. Sticky and open to all, as on a host.
    shared_tmp = ["--perms", "1777"] if as_root else []
    if as_root:
        argv += [*shared_tmp, "--tmpfs", "/dev/shm"]  # noqa: S108 - the sandbox's own
    etc_dirs: set[Path] = set()
    for entry in etc_allowlist():
        if as_root:
            # As for the policy's mounts below: bwrap would make /etc 0700 for root.
            for parent in reversed(entry.parents):
                if parent != Path("/") and parent not in etc_dirs:
                    argv += ["--perms", "0755", "--dir", str(parent)]
                    etc_dirs.add(parent)
        argv += ["--ro-bind-try", str(entry), str(entry)]
    if not any(dest == _TMP for _, dest, _ in mounts):
        argv += [*shared_tmp, "--tmpfs", str(_TMP)]
    made: set[Path] = {Path("/"), _TMP, *_BASE_MOUNTS, *_KERNEL_DIRS}
    read_only: list[Path] = [*_BASE_MOUNTS]
    for source, dest, writable in mounts:
        if as_root:
            # bwrap makes a mount's missing parents with the host's modes (a 0700
            # /root); the unprivileged user must be able to walk down to its mounts.
            for parent in reversed(dest.parents):
                if parent in made or any(_within(parent, ro) for ro in read_only):
                    continue
                argv += ["--perms", "0755", "--dir", str(parent)]
                made.add(parent)
        argv += ["--bind-try" if writable else "--ro-bind-try", str(source), str(dest)]
        made.add(dest)
        if not writable:
            read_only.append(dest)
    argv += ["--remount-ro", "/", "--"]
    if as_root:
        # Root's bwrap mounts what only root can reach (a toolchain under /root) and
        # needs no user namespace; the command then runs as the unprivileged user for
        # real, with no capabilities, no groups and no way back (no_new_privs: a
        # setuid program in /usr stays unprivileged too).
        drop_gid = policy.gid if policy.gid is not None else policy.uid
        argv += [_setpriv(), f"--reuid={policy.uid}", f"--regid={drop_gid}", "--clear-groups",
                 "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--"]
    return argv


@functools.cache
def _setpriv() -> str:
    """setpriv's absolute path, from the system dirs every sandbox mounts read-only
    from the host; never a name the command's PATH could resolve elsewhere."""
    system = ("/usr/bin", "/bin", "/usr/sbin", "/sbin")
    found = shutil.which("setpriv", path=os.pathsep.join(system))
    return found or "/usr/bin/setpriv"


def _policy_mounts(policy: Policy) -> list[tuple[Path, Path, bool]]:
    """The policy's (source, destination, writable) mounts in the order bwrap needs.

    Sorted by the destination's depth, so a parent is always mounted before what is
    inside it; at the same path the read-only mount comes last and wins, because
    asking for both is more likely a mistake than a wish to write.
    """
    rank = {"rw": 0, "bind": 1, "ro": 2}
    entries = (
        [(p, p, "rw") for p in policy.rw]
        + [(src, dest, "bind") for src, dest in policy.binds]
        + [(p, p, "ro") for p in policy.ro]
    )
    for source, dest, _ in entries:
        _check_mountable(source, "source")
        _check_mountable(dest, "destination")
    entries.sort(key=lambda e: (len(e[1].parts), rank[e[2]]))
    return [(Path(s), Path(d), kind != "ro") for s, d, kind in entries]


def _check_mountable(path: Path, role: str) -> None:
    """Refuse a mount that would undo the sandbox: a bug in the caller, so ValueError.

    A source may not be, or contain, the host's /tmp, /proc, /sys, /dev or /run,
    nor be anything under /run (docker.sock, agents' sockets). A destination may
    be /tmp (a private scratch dir there is the point of ``binds``) but may not
    replace /, /usr or /etc, nor shadow anything in /proc, /sys or /dev.
    """
    if not path.is_absolute():
        raise ValueError(f"sandbox mount {role} must be an absolute path: {path}")
    normal = Path(os.path.normpath(path))
    if role == "source":
        for candidate in {normal, path.resolve()}:
            if any(_within(candidate, never) for never in _NEVER_UNDER) or any(
                _within(never, candidate) for never in (*_NEVER_AT, *_NEVER_UNDER)
            ):
                raise ValueError(
                    f"sandbox mount source {path} would expose the host's /run, /tmp, "
                    "/proc, /sys or /dev; mount a private directory instead"
                )
    elif normal in (Path("/"), *_BASE_MOUNTS) or any(
        _within(normal, system) for system in _KERNEL_DIRS
    ):
        raise ValueError(f"sandbox mount destination {path} would replace a system directory")


def _within(path: Path, parent: Path) -> bool:
    """True when ``path`` is ``parent`` or inside it."""
    return path == parent or path.is_relative_to(parent)


def _prefix_for(entry: Path) -> Path:
    """The installation a PATH entry belongs to: /opt/x/bin is in /opt/x."""
    if entry.name in ("bin", "sbin", "shims") and entry.parent != entry:
        return entry.parent
    return entry


def _forbidden_set(forbidden: Iterable[Path]) -> list[Path]:
    resolved = {Path(os.path.normpath(p)) for p in _ALWAYS_FORBIDDEN}
    for path in forbidden:
        expanded = path.expanduser()
        resolved.add(Path(os.path.normpath(expanded)))
        resolved.add(expanded.resolve())
    return sorted(resolved)


def _exposes(path: Path, forbidden: Sequence[Path]) -> bool:
    """True when mounting ``path`` would show a forbidden path (it is, or contains, one)."""
    return any(_within(f, path) for f in forbidden)


def _covered(path: Path) -> bool:
    return any(_within(path, system) for system in _SYSTEM_DIRS)


def _dedupe(paths: Iterable[Path]) -> list[Path]:
    """First-seen order, without repeats and without paths inside another one."""
    unique = list(dict.fromkeys(paths))
    return [p for p in unique if not any(o != p and _within(p, o) for o in unique)]


def toolchain_paths(path_env: str, *, forbidden: Sequence[Path]) -> list[Path]:
    """Read-only prefixes for the PATH entries outside /usr, /bin and /sbin.

    A tool needs its installation, not only its bin dir: ``/opt/x/bin`` gives
    ``/opt/x``, ``~/.pyenv/shims`` gives ``~/.pyenv``, ``~/.cargo/bin`` gives
    ``~/.cargo``. Symlinks are resolved first. A prefix that is, or contains, a
    ``forbidden`` path (CI_RUNNER_HOME, $HOME itself, ...) falls back to the entry
    dir alone; an entry that still contains one is dropped. Relative and missing
    entries are dropped; the result has no path inside another one.

    /, /tmp, /var/tmp, /run, /var/run, /proc, /sys, /dev, /home and /etc are always
    forbidden. Not covered: a tool in /usr/local/bin that is a symlink into /opt (the
    entry is under /usr, so its target is not followed).
    """
    banned = _forbidden_set(forbidden)
    found: list[Path] = []
    for raw in path_env.split(os.pathsep):
        if not raw or not Path(raw).expanduser().is_absolute():
            continue  # a relative entry means the cwd, which is the worktree's business
        entry = Path(raw).expanduser().resolve()
        if not _is_dir(entry) or _covered(entry):
            continue
        prefix = _prefix_for(entry)
        if _exposes(prefix, banned):
            prefix = entry
        if _exposes(prefix, banned):
            continue
        found.append(prefix)
    return _dedupe(found)


def _is_dir(path: Path) -> bool:
    """Like ``Path.is_dir``, but a path we may not look at (another user's PATH entry
    left in the environment) is simply not one."""
    try:
        return path.is_dir()
    except OSError:
        return False


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def python_paths(*, forbidden: Sequence[Path]) -> list[Path]:
    """Read-only paths a sandboxed Python needs to run ci-runner as this one does.

    The interpreter's prefixes (``sys.prefix``, ``base_prefix``, ``exec_prefix``),
    the existing absolute ``sys.path`` entries (site-packages, zip files) and
    ci-runner's own source roots, found with ``importlib.util.find_spec`` for
    ``ci_runner``, ``ci_runner.starters`` and ``ci_runner.sandbox_images`` (an
    editable install keeps them outside site-packages). ``''``, relative entries
    and the cwd are ignored: the cwd is the worktree, the policy's business.
    Resolved, without repeats or paths inside another one, without what /usr
    already gives, and without any path that is, or contains, a ``forbidden`` one.
    """
    banned = _forbidden_set(forbidden)
    try:
        cwd: Path | None = Path.cwd().resolve()
    except FileNotFoundError:  # the cwd was removed under us: nothing to ignore
        cwd = None
    candidates: list[Path] = [
        Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)
    ]
    for entry in sys.path:
        if entry and Path(entry).is_absolute():
            candidates.append(Path(entry))
    package = Path(__file__).resolve().parent
    for name in ("ci_runner", "ci_runner.starters", "ci_runner.sandbox_images"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations:
            candidates.extend(Path(p) for p in spec.submodule_search_locations)
        else:
            # sandbox_images has no __init__.py, so an editable install's finder
            # returns no spec: look where images.py does, in the package, then
            # beside it in a source checkout.
            tail = name.rpartition(".")[2]
            candidates.extend(d / tail for d in (package, package.parent) if (d / tail).is_dir())
    found: list[Path] = []
    for candidate in candidates:
        path = candidate.resolve()
        if path == cwd or not _exists(path) or _covered(path) or _exposes(path, banned):
            continue
        found.append(path)
    return _dedupe(found)


# ---------------------------------------------------------------------------
# Which level this machine allows


@dataclass(frozen=True)
class Level:
    """The sandbox a run gets here, and in one line why."""

    kind: str  # "bwrap" | "landlock" | "off"
    reason: str
    landlock_abi: int = 0


_MODES = ("auto", "bwrap", "landlock", "off")
_USERNS_FIX = (
    "enable user namespaces (sysctl kernel.unprivileged_userns_clone=1, or on Ubuntu "
    "kernel.apparmor_restrict_unprivileged_userns=0) or use --sandbox landlock"
)


def _landlock_gaps(abi: int) -> str:
    if abi >= 6:
        return "UNIX sockets on disk, UDP and other processes' command lines are not covered"
    return "UNIX sockets, UDP, signals and other processes' command lines are not covered"


@functools.cache
def probe(mode: str = "auto") -> Level:
    """The sandbox level for ``mode`` (auto, bwrap, landlock or off), once per process.

    ``auto`` takes bwrap when it is on PATH and really starts a sandbox (the full
    ``bwrap_argv`` with a network namespace, running ``true``: about 5 ms, at most
    10 s), else Landlock when the kernel reports an ABI >= 1, else off; the reason
    says what was refused. ``bwrap`` and ``landlock`` insist: when that level cannot
    be had they raise ``UsageError`` naming the cause and the fix. As root, bwrap is
    tried as the user sandboxes run as (``sandbox_ids``), because root may create
    user namespaces where that user may not (Ubuntu's AppArmor rule).
    """
    if mode not in _MODES:
        raise UsageError(f"unknown sandbox mode {mode!r}: use one of {', '.join(_MODES)}")
    if mode == "off":
        return Level("off", "the sandbox is turned off (--sandbox off)")
    if mode in ("auto", "bwrap"):
        problem, fix = _bwrap_problem()
        if problem is None:
            return Level("bwrap", "bubblewrap: private mount, pid, ipc, uts and network "
                                  "namespaces")
        if mode == "bwrap":
            raise UsageError(f"--sandbox bwrap is not possible here: {problem}; {fix}")
    else:
        problem = None
    abi, why = _landlock_status()
    if abi >= 1:
        if problem is None:
            return Level("landlock", f"Landlock ABI {abi} (--sandbox landlock): "
                                     f"{_landlock_gaps(abi)}", abi)
        return Level("landlock", f"{problem}; using Landlock ABI {abi}: {_landlock_gaps(abi)}",
                     abi)
    if mode == "landlock":
        raise UsageError(f"--sandbox landlock is not possible here: {why}; "
                         "use --sandbox bwrap or --sandbox off")
    return Level("off", f"{problem} and {why}: commands run unsandboxed")


def _bwrap_problem() -> tuple[str | None, str]:
    """(None, "") when bwrap works here, else (why not, how to fix it)."""
    found = shutil.which("bwrap")
    if found is None:
        return "bubblewrap is not installed", "apt-get install bubblewrap"
    ids = sandbox_ids()
    policy = Policy(network=False) if ids is None else Policy(network=False, uid=ids[0],
                                                              gid=ids[1])
    try:
        # As root, bwrap runs as root and drops to the sandbox's user inside
        # (setpriv), exactly as a run's sandbox does.
        done = subprocess.run(
            [*bwrap_argv(policy, bwrap=found), "true"], check=False, capture_output=True,
            text=True, timeout=10, stdin=subprocess.DEVNULL, cwd="/",
            env={"PATH": "/usr/bin:/bin"},
        )
    except subprocess.TimeoutExpired:
        return "bwrap did not finish a trivial sandbox in 10 s", _USERNS_FIX
    except OSError as exc:
        return f"bwrap could not be started ({exc.strerror})", "apt-get install bubblewrap"
    if done.returncode == 0:
        return None, ""
    lines = (done.stderr or "").strip().splitlines()
    # bwrap's first sentence names the cause; the rest is links to its README.
    detail = lines[0].split(". ")[0][:200] if lines else f"exit code {done.returncode}"
    if "namespace" in detail:
        return f"user namespaces are refused here ({detail})", _USERNS_FIX
    # Namespaces worked but a mount did not (/proc in some containers, say).
    return f"bwrap cannot build a sandbox here ({detail})", "use --sandbox landlock"


def _landlock_status() -> tuple[int, str]:
    """(ABI, "") or (0, why Landlock is unavailable)."""
    try:
        return landlock_abi(raising=True), ""
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            return 0, "this kernel has no Landlock (Linux >= 5.13 needed)"
        if exc.errno == errno.EOPNOTSUPP:
            return 0, "Landlock is disabled at boot (add landlock to the lsm= kernel parameter)"
        return 0, f"Landlock is unavailable ({exc.strerror})"


# ---------------------------------------------------------------------------
# Landlock, in ctypes: the syscalls have no libc wrappers.

# The same numbers on x86_64 and aarch64 (the syscalls came after the tables merged).
_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
_FS_REMOVE_DIR = 1 << 4
_FS_REMOVE_FILE = 1 << 5
_FS_MAKE_CHAR = 1 << 6
_FS_MAKE_DIR = 1 << 7
_FS_MAKE_REG = 1 << 8
_FS_MAKE_SOCK = 1 << 9
_FS_MAKE_FIFO = 1 << 10
_FS_MAKE_BLOCK = 1 << 11
_FS_MAKE_SYM = 1 << 12
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_FS_IOCTL_DEV = 1 << 15  # ABI 5
_NET_BIND_TCP = 1 << 0  # ABI 4
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
_SCOPE_SIGNAL = 1 << 1

_FS_ALL_V1 = (1 << 13) - 1
_FS_READ = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
# The rights that make sense on a file (the kernel refuses directory rights on one).
_FS_FILE = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the kernel's struct is __attribute__((packed)): 12 bytes
    _fields_ = (
        ("allowed_access", ctypes.c_uint64),
        ("parent_fd", ctypes.c_int32),
    )


# Looked up once at import: landlock_restrict runs in freshly forked children, where
# loading a library or importing a module could meet a lock another thread held.
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int
_SUPPORTED_ARCH = platform.machine() in ("x86_64", "aarch64", "arm64")


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def landlock_abi(*, raising: bool = False) -> int:
    """The Landlock ABI version of the running kernel; 0 when there is none (or
    OSError with the kernel's reason when ``raising``)."""
    if not _SUPPORTED_ARCH:
        if raising:
            raise OSError(errno.ENOSYS, f"Landlock syscalls unknown on {platform.machine()}")
        return 0
    result = _syscall(ctypes.c_long(_SYS_CREATE_RULESET), None, ctypes.c_size_t(0),
                      ctypes.c_uint32(_CREATE_RULESET_VERSION))
    if result < 0:
        if raising:
            _check(result, "landlock_create_ruleset")
        return 0
    return int(result)


def landlock_defaults() -> tuple[list[Path], list[Path]]:
    """(ro, rw) paths every Landlock-confined command needs besides its policy.

    Read-only: /usr and the merged-/usr links, the same /etc allowlist bwrap uses,
    /proc and /sys, /dev/urandom and /dev/random. Writable: /dev/null, /dev/zero,
    /dev/full. Not covered, so refused unless the caller adds them: /tmp (give the
    run a private scratch dir and set TMPDIR), /dev/shm (shared with the host, so
    multiprocessing's semaphores fail), /dev/tty and /dev/pts (a confined command
    should not reach the user's terminal), and anything under /run.

    /proc is readable because Python and most runtimes read /proc/self; other
    processes' environ, maps, mem and fds stay closed, since Landlock refuses ptrace
    access (and so those /proc files) to anything outside the domain. Their
    cmdline and status remain readable: keep secrets off command lines. That holds
    only without privileges: the kernel lets a reader with CAP_PERFMON (root) open
    another process's environ and maps before it asks Landlock, so a root caller
    must ``drop_capabilities`` before it confines a child.
    """
    ro = [Path("/usr")]
    ro += [Path("/") / name for name in _ROOT_LINKS if os.path.lexists(Path("/") / name)]
    ro += etc_allowlist()
    ro += [Path("/proc"), Path("/sys"), Path("/dev/urandom"), Path("/dev/random")]
    rw = [Path("/dev/null"), Path("/dev/zero"), Path("/dev/full")]
    return ro, rw


def landlock_restrict(*, ro: Sequence[Path], rw: Sequence[Path], network: bool = True) -> int:
    """Confine the calling thread, and all it forks and execs, to these paths; returns the ABI.

    ``ro`` paths (and all below them) may be read, listed and executed, ``rw``
    paths also written, created in, removed from and renamed within; every other
    file is refused (EACCES), whatever the uid, root included. On ABI >= 6 the
    domain is also scoped: no signals to, and no abstract UNIX sockets of,
    processes outside it. ``network=False`` also refuses TCP bind and connect
    (ABI >= 4; UDP is not covered). Rights the running ABI does not know are left
    out, as the kernel documentation advises (REFER needs 2, TRUNCATE 3,
    IOCTL_DEV 5). Sets no_new_privs first. Raises OSError when the kernel refuses.

    As root, drop privileges first: Landlock still confines files, but a process
    keeping CAP_PERFMON reads other processes' environ (see ``landlock_defaults``).

    Safe in a freshly forked single-threaded child: libc is loaded at import and
    nothing here imports or locks. Only the calling thread is restricted, so call
    it before the child starts threads. Paths that do not exist are skipped.
    """
    abi = landlock_abi(raising=True)
    handled_fs = _FS_ALL_V1 | _FS_REFER | _FS_TRUNCATE | _FS_IOCTL_DEV
    # Best effort, as the kernel documentation does it: ask only for what this ABI knows.
    if abi < 2:
        handled_fs &= ~_FS_REFER
    if abi < 3:
        handled_fs &= ~_FS_TRUNCATE
    if abi < 5:
        handled_fs &= ~_FS_IOCTL_DEV
    handled_net = 0 if network or abi < 4 else _NET_BIND_TCP | _NET_CONNECT_TCP
    scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if abi >= 6 else 0
    attr = _RulesetAttr(handled_fs, handled_net, scoped)
    # The struct grew with the ABI; an older kernel wants only the part it knows.
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = _check(
        _syscall(ctypes.c_long(_SYS_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(size),
                 ctypes.c_uint32(0)),
        "landlock_create_ruleset",
    )
    try:
        for paths, rights in ((ro, _FS_READ), (rw, handled_fs)):
            for path in paths:
                _add_path_rule(ruleset, path, rights & handled_fs)
        # Without no_new_privs, restrict_self needs CAP_SYS_ADMIN; with it, a setuid
        # program cannot run outside the rules either.
        _check(_prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0),
                      ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl(PR_SET_NO_NEW_PRIVS)")
        _check(_syscall(ctypes.c_long(_SYS_RESTRICT_SELF), ctypes.c_int(ruleset),
                        ctypes.c_uint32(0)), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


def _add_path_rule(ruleset: int, path: Path, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return  # like bwrap's --bind-try: a missing path grants nothing
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= _FS_FILE
        rule = _PathBeneathAttr(rights, fd)
        _check(_syscall(ctypes.c_long(_SYS_ADD_RULE), ctypes.c_int(ruleset),
                        ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule), ctypes.c_uint32(0)),
               f"landlock_add_rule({path})")
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# Who sandboxed processes run as when ci-runner is root


_PR_CAPBSET_DROP = 24
_PR_SET_SECUREBITS = 28
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
# SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP, SECBIT_KEEP_CAPS off, each with its lock bit;
# SECBIT_NO_CAP_AMBIENT_RAISE and its lock.
_SECUREBITS = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_capabilities() -> None:
    """Keep uid 0 but lose every capability, for this process and all it execs:
    securebits so that exec grants root nothing (NOROOT, locked), an empty bounding
    set, no ambient capabilities, then empty effective/permitted/inheritable sets.
    For Landlock under a root ci-runner; raises OSError when the kernel refuses."""
    _check(_prctl(_PR_SET_SECUREBITS, ctypes.c_ulong(_SECUREBITS), ctypes.c_ulong(0),
                  ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl(PR_SET_SECUREBITS)")
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text().strip())
    for cap in range(last + 1):
        _check(_prctl(_PR_CAPBSET_DROP, ctypes.c_ulong(cap), ctypes.c_ulong(0),
                      ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl(PR_CAPBSET_DROP)")
    _prctl(_PR_CAP_AMBIENT, ctypes.c_ulong(_PR_CAP_AMBIENT_CLEAR_ALL), ctypes.c_ulong(0),
           ctypes.c_ulong(0), ctypes.c_ulong(0))
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def sandbox_ids() -> tuple[int, int] | None:
    """The unprivileged (uid, gid) sandboxes run as when this process is root, else None.

    The ``ci-runner`` user when it exists, else ``nobody``/``nogroup`` (65534).

    CI_RUNNER_SANDBOX_UID is a user name, a uid, or ``uid:gid``; root itself is
    refused, since a sandbox as root would own every root-owned file it can see.
    """
    if os.geteuid() != 0:
        return None
    override = os.environ.get("CI_RUNNER_SANDBOX_UID", "").strip()
    if override:
        ids = _parse_ids(override)
    else:
        try:
            user = pwd.getpwnam("ci-runner")
            ids = (user.pw_uid, user.pw_gid)
        except KeyError:
            ids = (_uid_of("nobody", 65534), _gid_of("nogroup", _gid_of("nobody", 65534)))
    if ids[0] == 0 or ids[1] == 0:
        raise UsageError("CI_RUNNER_SANDBOX_UID must name an unprivileged user, not root")
    return ids


def _parse_ids(text: str) -> tuple[int, int]:
    user_part, _, group_part = text.partition(":")
    try:
        if user_part.isdigit():
            uid = int(user_part)
            try:
                default_gid = pwd.getpwuid(uid).pw_gid
            except KeyError:
                default_gid = uid
        else:
            entry = pwd.getpwnam(user_part)
            uid, default_gid = entry.pw_uid, entry.pw_gid
        if not group_part:
            return uid, default_gid
        gid = int(group_part) if group_part.isdigit() else grp.getgrnam(group_part).gr_gid
    except KeyError:
        raise UsageError(
            f"CI_RUNNER_SANDBOX_UID={text!r} names no user or group here: "
            "use a user name, a uid, or uid:gid"
        ) from None
    return uid, gid


def _uid_of(name: str, default: int) -> int:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return default


def _gid_of(name: str, default: int) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return default
