"""The sandbox: policies turned into argv without processes, then attacked for real.

The first half checks ``bwrap_argv`` and the path helpers as data. The second half
starts real bubblewrap sandboxes and Landlock-confined children with a policy like
a run's (a writable worktree; a CI_RUNNER_HOME with a secrets file that is not
mounted) and tries to get out. On CI a machine without bubblewrap fails these
tests rather than skipping them, so a sandbox that silently stopped existing is
noticed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ci_runner import sandbox
from ci_runner.errors import UsageError
from ci_runner.sandbox import Policy, bwrap_argv, python_paths, toolchain_paths
from tests.procs import alive

ROOT = Path(__file__).resolve().parents[1]
NOUSERNS = Path(__file__).with_name("nouserns.py")
IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")
SANDBOX_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}

# bwrap's options and how many arguments each takes, to read an argv back.
ARITY = {
    "--bind": 2, "--bind-try": 2, "--ro-bind": 2, "--ro-bind-try": 2, "--symlink": 2,
    "--uid": 1, "--gid": 1, "--hostname": 1, "--cap-drop": 1, "--proc": 1, "--dev": 1,
    "--tmpfs": 1, "--remount-ro": 1, "--perms": 1, "--dir": 1,
}
BINDS = ("--bind", "--bind-try", "--ro-bind", "--ro-bind-try")
PR_SET_DUMPABLE = 4
PR_GET_SECUREBITS = 27
SECBIT_NOROOT_LOCKED = 0x01 | 0x02  # exec grants root no capability, for good
# What root's sandbox runs the command under, after setpriv's absolute path.
SETPRIV_TAIL = ["--clear-groups", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--"]
CAPS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def parse(argv: list[str]) -> tuple[list[str], list[tuple[str, ...]], list[str]]:
    """(flags, [(option, args...)], tail) of a bwrap argv, failing on unknown options;
    ``tail`` is what follows bwrap's own '--' (root's setpriv, or nothing)."""
    assert argv[-1] == "--"
    flags, ops = [], []
    i = 1
    while argv[i] != "--":
        option = argv[i]
        n = ARITY.get(option, 0)
        if n == 0:
            assert option.startswith("--unshare") or option in (
                "--die-with-parent", "--new-session"), option
            flags.append(option)
        else:
            ops.append((option, *argv[i + 1:i + 1 + n]))
        i += 1 + n
    return flags, ops, argv[i + 1:]


def mounts(argv: list[str]) -> list[tuple[str, str, str]]:
    """The bind mounts (option, source, destination), in order."""
    return [(o[0], o[1], o[2]) for o in parse(argv)[1] if o[0] in BINDS]


def made_dirs(argv: list[str]) -> list[str]:
    """The directories bwrap is asked to create (``--perms 0755 --dir P``) for the
    policy's mounts (the /etc allowlist's own parents aside), checking that each comes
    with its mode and that every other ``--perms`` is a shared tmpfs's
    (``--perms 1777 --tmpfs P``)."""
    ops = parse(argv)[1]
    found = []
    for i, op in enumerate(ops):
        if op[0] == "--dir":
            assert ops[i - 1] == ("--perms", "0755"), ops[i - 1]
            if not Path(op[1]).is_relative_to("/etc"):
                found.append(op[1])
        elif op[0] == "--perms":
            assert ops[i + 1][0] == "--dir" or (op[1] == "1777" and ops[i + 1][0] == "--tmpfs")
    return found


def tmpfs(argv: list[str]) -> dict[str, str | None]:
    """Each tmpfs bwrap mounts, with the mode asked for it (None: bwrap's default)."""
    ops = parse(argv)[1]
    return {op[1]: ops[i - 1][1] if ops[i - 1][0] == "--perms" else None
            for i, op in enumerate(ops) if op[0] == "--tmpfs"}


def capabilities(status: str) -> dict[str, int]:
    """The Cap* lines of a /proc/PID/status, as numbers."""
    found = {}
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name in CAPS:
            found[name] = int(value.strip(), 16)
    assert set(found) == set(CAPS), status
    return found


def unavailable(reason: str) -> None:
    """Fail on CI, where the sandbox must exist; skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the sandbox tests must run here)")
    pytest.skip(reason)


def need_root() -> None:
    if os.geteuid() != 0:
        unavailable("only a root ci-runner drops to a sandbox user (CI runs as root)")


# ---------------------------------------------------------------------------
# Policy -> argv, no processes


@pytest.fixture(params=["root", "user"])
def caller(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Build argvs as a root or a non-root ci-runner would, whoever runs the tests."""
    euid = 0 if request.param == "root" else 1000
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: euid)
    return str(request.param)


def test_argv_unshares_everything_and_keeps_session_rules(caller: str) -> None:
    argv = bwrap_argv(Policy(), bwrap="/usr/bin/bwrap")
    flags, ops, tail = parse(argv)
    assert argv[0] == "/usr/bin/bwrap"
    # No sandbox user (policy.uid None): the caller's own uid, in a user namespace,
    # whoever the caller is.
    assert set(flags) == {"--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                          "--unshare-cgroup-try", "--die-with-parent", "--new-session"}
    assert ("--cap-drop", "ALL") in ops
    assert ("--hostname", "ci-runner") in ops
    assert ("--uid", str(os.getuid())) in ops and ("--gid", str(os.getgid())) in ops
    assert ("--proc", "/proc") in ops and ("--dev", "/dev") in ops
    assert ops[-1] == ("--remount-ro", "/")  # last: nothing can be written outside the policy
    assert tail == [] and made_dirs(argv) == []
    assert tmpfs(argv) == {"/tmp": None}  # made as (and owned by) the caller's uid


def test_a_non_root_caller_maps_the_sandbox_ids_in_a_user_namespace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    argv = bwrap_argv(Policy(network=False, uid=1234, gid=4321, hostname="h",
                             ro=(Path("/opt/tool"),)))
    flags, ops, tail = parse(argv)
    assert "--unshare-user" in flags and "--unshare-net" in flags
    assert ("--cap-drop", "ALL") in ops
    assert ("--uid", "1234") in ops and ("--gid", "4321") in ops and ("--hostname", "h") in ops
    assert tail == [] and made_dirs(argv) == []
    assert "--unshare-net" not in parse(bwrap_argv(Policy()))[0]


def test_a_root_caller_runs_bwrap_as_root_and_setpriv_drops_inside(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 0)
    argv = bwrap_argv(Policy(network=False, uid=1234, gid=4321, hostname="h"))
    flags, ops, tail = parse(argv)
    # No user namespace: one owned by root would map the sandbox's uid onto root.
    assert "--unshare-user" not in flags and "--unshare-net" in flags
    assert not [op for op in ops if op[0] in ("--cap-drop", "--uid", "--gid")]
    assert ("--hostname", "h") in ops and ops[-1] == ("--remount-ro", "/")
    # Root's tmpfs would be root's 0755: the sandbox user gets sticky, open ones.
    assert tmpfs(argv) == {"/tmp": "1777", "/dev/shm": "1777"}
    assert ops.index(("--dev", "/dev")) < ops.index(("--tmpfs", "/dev/shm"))
    # The command runs as 1234:4321 for real, with no groups, capabilities or way back,
    # and setpriv is the host's, never one a command's PATH could pick.
    assert tail[1:] == ["--reuid=1234", "--regid=4321", *SETPRIV_TAIL]
    assert Path(tail[0]).name == "setpriv" and Path(tail[0]).parent in (
        Path("/usr/bin"), Path("/bin"), Path("/usr/sbin"), Path("/sbin"))
    assert Path(argv[0]).is_absolute()  # bwrap itself: this process's PATH, not the step's
    # Without a gid the uid's number serves.
    assert parse(bwrap_argv(Policy(uid=1234)))[2][1:3] == ["--reuid=1234", "--regid=1234"]
    # A root sandbox user, or none, is the caller's own business: the user-namespace form.
    for policy in (Policy(), Policy(uid=0, gid=0)):
        flags, ops, tail = parse(bwrap_argv(policy))
        uid = os.getuid() if policy.uid is None else policy.uid
        assert "--unshare-user" in flags and ("--uid", str(uid)) in ops
        assert tail == []


def test_root_makes_walkable_parents_but_not_inside_read_only_mounts(caller: str) -> None:
    pyenv, worktree = Path("/root/.pyenv"), Path("/tmp/ci/runs/r1/worktree")
    policy = Policy(
        ro=(pyenv, Path("/opt/tool"), Path("/usr/local/lib/x"), Path("/etc/python3")),
        rw=(worktree, Path("/opt/tool/cache/pip")),  # inside a read-only mount
        binds=((Path("/srv/scratch"), Path("/home/ci/.cache")),),
        uid=1234, gid=4321,
    )
    argv = bwrap_argv(policy)
    made = made_dirs(argv)
    if caller == "user":
        assert made == []  # bwrap makes parents as the caller, who can walk them
        return
    # A mount under a 0700 dir (/root) gets that dir made 0755 in the sandbox first,
    # and so does every missing parent of a mount, each once.
    assert sorted(made) == ["/home", "/home/ci", "/opt", "/root", "/tmp/ci", "/tmp/ci/runs",
                            "/tmp/ci/runs/r1"]
    _, ops, _ = parse(argv)
    at = ops.index(("--dir", "/root"))
    assert ops[at + 1] == ("--ro-bind-try", str(pyenv), str(pyenv))
    dirs_then_binds = [op[1] if op[0] == "--dir" else op[2] for op in ops
                       if op[0] == "--dir" or op[0] in BINDS]
    for i, path in enumerate(dirs_then_binds):
        # Nothing is made or mounted inside a path that comes later.
        assert not [p for p in dirs_then_binds[i + 1:] if Path(path).is_relative_to(p)
                    and p != path], path
    # Nothing is made inside a read-only mount (/usr, /etc, /opt/tool): it cannot be.
    assert not [d for d in made if Path(d).is_relative_to("/opt/tool")
                or Path(d).is_relative_to("/usr") or Path(d).is_relative_to("/etc")]
    # Nor for a mount's own destination, /tmp or other dirs the sandbox already has.
    assert not {"/", "/tmp", "/usr", "/etc", str(pyenv), str(worktree)} & set(made)


def test_system_dirs_are_read_only_and_links_stay_links(caller: str) -> None:
    argv = bwrap_argv(Policy(uid=1234))
    _, ops, _ = parse(argv)
    assert ("--ro-bind", "/usr", "/usr") in ops
    for name in ("bin", "sbin", "lib", "lib64"):
        host = Path("/") / name
        if host.is_symlink():
            assert ("--symlink", str(host.readlink()), str(host)) in ops
        elif host.is_dir():
            assert ("--ro-bind", str(host), str(host)) in ops
    # Every system mount is read-only; only the policy adds writable ones.
    assert all(option.startswith("--ro-") for option, _, _ in mounts(argv))


def test_etc_is_an_allowlist_without_secrets(caller: str) -> None:
    argv = bwrap_argv(Policy(uid=1234))
    sources = [src for _, src, _ in mounts(argv)]
    assert "/etc" not in sources
    for needed in ("/etc/passwd", "/etc/resolv.conf", "/etc/ssl", "/etc/hosts"):
        if Path(needed).exists():
            assert needed in sources
    hidden = ("/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/ssh", "/etc/docker",
              "/etc/machine-id", "/etc/pip.conf", "/etc/npmrc")
    assert not [a for a in argv if a.startswith(hidden)]


def test_never_run_var_run_or_the_host_tmp(caller: str) -> None:
    worktree = Path("/tmp/ci-runner-wt")  # under /tmp is fine; /tmp itself is not
    argv = bwrap_argv(Policy(rw=(worktree,), uid=1234))
    assert not [a for a in argv if a in ("/run", "/var/run") or a.startswith(("/run/", "/var/run"))]
    assert [(src, dest) for _, src, dest in mounts(argv) if dest.startswith("/tmp")] == [
        (str(worktree), str(worktree))]
    _, ops, _ = parse(argv)
    assert ops.index(("--tmpfs", "/tmp")) < ops.index(("--bind-try", str(worktree), str(worktree)))


@pytest.mark.parametrize("policy", [
    Policy(rw=(Path("/tmp"),)),
    Policy(ro=(Path("/"),)),
    Policy(ro=(Path("/var"),)),  # contains /var/run
    Policy(ro=(Path("/run/user/0"),)),
    Policy(ro=(Path("/var/run/docker.sock"),)),
    Policy(binds=((Path("/tmp"), Path("/scratch")),)),
    Policy(binds=((Path("/srv/x"), Path("/usr")),)),
    Policy(binds=((Path("/srv/x"), Path("/proc/1")),)),
    Policy(rw=(Path("relative/dir"),)),
], ids=["host-tmp", "root", "var", "run-user", "docker-sock", "tmp-as-source", "over-usr",
        "into-proc", "relative"])
def test_policies_that_would_undo_the_sandbox_are_refused(policy: Policy, caller: str) -> None:
    with pytest.raises(ValueError, match="sandbox mount"):
        bwrap_argv(policy)
    with pytest.raises(ValueError, match="sandbox mount"):
        bwrap_argv(Policy(ro=policy.ro, rw=policy.rw, binds=policy.binds, uid=1234))


def test_a_private_scratch_dir_at_tmp_replaces_the_tmpfs(caller: str) -> None:
    scratch = Path("/srv/ci/runs/r1/tmp")
    argv = bwrap_argv(Policy(binds=((scratch, Path("/tmp")),), uid=1234))
    _, ops, _ = parse(argv)
    assert ("--tmpfs", "/tmp") not in ops
    assert ("--bind-try", str(scratch), "/tmp") in ops
    assert "/tmp" not in made_dirs(argv) and "/tmp" not in tmpfs(argv)


def test_mounts_go_parents_first_whatever_the_policy_order(caller: str) -> None:
    home = Path("/home/dev")
    policy = Policy(
        ro=(home / "work" / ".git", home, home / ".pyenv"),
        rw=(home / "work", home / ".cache" / "pip"),
        binds=((Path("/srv/scratch"), home / "work" / "tmp"),),
        uid=1234,
    )
    argv = bwrap_argv(policy)
    order = [(option, dest) for option, _, dest in mounts(argv) if dest.startswith("/home")]
    dests = [dest for _, dest in order]
    # A parent is always mounted before anything inside it...
    for i, dest in enumerate(dests):
        assert not [d for d in dests[i + 1:] if Path(dest).is_relative_to(d) and d != dest]
    # ...so a read-only home holds a writable worktree, which holds a read-only .git.
    assert dests.index(str(home)) < dests.index(str(home / "work")) < dests.index(
        str(home / "work" / ".git"))
    assert ("--ro-bind-try", str(home / "work" / ".git")) in order
    assert ("--bind-try", str(home / "work")) in order
    # As root only /home is made: everything else is inside the read-only home.
    assert made_dirs(argv) == (["/home"] if caller == "root" else [])


def test_the_same_path_read_only_and_writable_ends_read_only(caller: str) -> None:
    path = Path("/srv/shared")
    binds = mounts(bwrap_argv(Policy(ro=(path,), rw=(path,), uid=1234)))
    assert [b for b in binds if b[2] == str(path)][-1][0] == "--ro-bind-try"


def test_root_makes_etc_walkable_for_the_sandbox_user(caller: str) -> None:
    ops = parse(bwrap_argv(Policy(uid=1234, gid=1234)))[1]
    etc = ("--dir", "/etc") in ops
    assert etc == (caller == "root")  # a root bwrap would make it 0700 otherwise


@dataclass
class FakeHome:
    home: Path
    ci_home: Path
    opt: Path


@pytest.fixture
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHome:
    """A $HOME with the usual toolchains and CI_RUNNER_HOME inside it, at the XDG default."""
    home = tmp_path / "home"
    ci_home = home / ".local" / "share" / "ci-runner"
    for d in (".cargo/bin", ".pyenv/shims", ".pyenv/bin", ".pyenv/versions/3.12/bin",
              ".local/bin", "bin", ".local/share/ci-runner/worktrees"):
        (home / d).mkdir(parents=True)
    opt = tmp_path / "opt"
    for d in ("x/bin", "y/libexec/bin", "node/bin"):
        (opt / d).mkdir(parents=True)
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "node-bin").symlink_to(opt / "node" / "bin")
    monkeypatch.setenv("HOME", str(home))
    return FakeHome(home, ci_home, opt)


def test_toolchain_prefixes(fake_home: FakeHome, tmp_path: Path) -> None:
    h, opt = fake_home.home, fake_home.opt
    path_env = os.pathsep.join([
        "~/.cargo/bin", str(h / ".pyenv/shims"), str(h / ".pyenv/bin"),
        str(h / ".local/bin"),  # ~/.local holds CI_RUNNER_HOME: the entry alone
        str(h / "bin"),  # its prefix is $HOME: the entry alone
        str(opt / "x/bin"), str(opt / "y/libexec/bin"),
        str(tmp_path / "links/node-bin"),  # resolved to opt/node/bin first
        "/usr/local/bin", "/usr/bin", "/bin", "/sbin",  # in every sandbox already
        "", "relative/bin", str(tmp_path / "missing/bin"), str(h),  # dropped
    ])
    found = toolchain_paths(path_env, forbidden=[h, fake_home.ci_home])
    assert found == [h / ".cargo", h / ".pyenv", h / ".local/bin", h / "bin", opt / "x",
                     opt / "y/libexec", opt / "node"]


def test_toolchain_entry_containing_a_forbidden_path_is_dropped(fake_home: FakeHome) -> None:
    h = fake_home.home
    found = toolchain_paths(f"{h / '.local'}:{h / '.local/share'}:{h / '.cargo/bin'}",
                            forbidden=[h, fake_home.ci_home])
    assert found == [h / ".cargo"]
    # /, /tmp, /run and their kind are forbidden even when the caller forgets them.
    assert toolchain_paths("/tmp:/run:/var", forbidden=[]) == []


def test_python_paths(fake_home: FakeHome, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    h = fake_home.home
    site = h / ".local/lib/python3/site-packages"
    (site / "pkg").mkdir(parents=True)
    worktree = tmp_path / "worktree"
    worktree.mkdir()
    monkeypatch.chdir(worktree)
    monkeypatch.setattr(sys, "path", [
        "", str(worktree),  # the cwd: the worktree's business, not a toolchain's
        str(site), str(site / "pkg"),  # the second is inside the first
        str(h / ".local"),  # contains CI_RUNNER_HOME
        str(h),  # is $HOME
        str(tmp_path / "missing"), "relative",
        *sys.path,
    ])
    found = python_paths(forbidden=[h, fake_home.ci_home])
    assert site in found and site / "pkg" not in found
    for dropped in (worktree, h / ".local", h, tmp_path / "missing"):
        assert dropped not in found
    # The interpreter's prefix, or what holds it (a venv inside an editable checkout).
    prefix = Path(sys.prefix).resolve()
    assert any(prefix.is_relative_to(p) for p in (*found, Path("/usr")))
    # ci-runner's own source (an editable install keeps it outside site-packages).
    package = Path(sandbox.__file__).resolve().parent
    assert any(package.is_relative_to(p) for p in found)
    assert len(found) == len(set(found))


def test_forbidden_paths_never_reach_the_argv(fake_home: FakeHome, tmp_path: Path) -> None:
    h, ci_home = fake_home.home, fake_home.ci_home
    worktree = ci_home / "worktrees" / "run-1"
    path_env = os.pathsep.join([str(h / ".local/bin"), str(h / "bin"), str(h / ".cargo/bin"),
                                os.environ.get("PATH", "")])
    forbidden = [h, ci_home]
    ro = (*toolchain_paths(path_env, forbidden=forbidden), *python_paths(forbidden=forbidden))
    argv = bwrap_argv(Policy(ro=ro, rw=(worktree,)))
    for _, source, _ in mounts(argv):
        for bad in forbidden:
            # A mount may sit inside a forbidden dir (the worktree), never hold one.
            assert not bad.is_relative_to(source), (source, bad)


def test_landlock_defaults_cover_the_system_but_not_tmp_or_run() -> None:
    ro, rw = sandbox.landlock_defaults()
    assert {Path("/usr"), Path("/proc"), Path("/sys"), Path("/dev/urandom")} <= set(ro)
    assert set(rw) == {Path("/dev/null"), Path("/dev/zero"), Path("/dev/full")}
    every = [*ro, *rw]
    assert Path("/etc") not in every and Path("/etc/shadow") not in every
    assert not [p for p in every if p.is_relative_to("/tmp") or p.is_relative_to("/run")]


def test_probe_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox.probe.cache_clear()
    monkeypatch.setenv("PATH", "/nonexistent")  # no bwrap on PATH
    try:
        assert sandbox.probe("off").kind == "off"
        with pytest.raises(UsageError, match="unknown sandbox mode"):
            sandbox.probe("docker")
        with pytest.raises(UsageError, match="apt-get install bubblewrap"):
            sandbox.probe("bwrap")
        level = sandbox.probe("auto")
        assert level.kind == ("landlock" if sandbox.landlock_abi() else "off")
        assert "not installed" in level.reason and "\n" not in level.reason
    finally:
        sandbox.probe.cache_clear()


def test_sandbox_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI_RUNNER_SANDBOX_UID", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    uid, gid = sandbox.sandbox_ids() or (0, 0)
    assert uid != 0 and gid != 0
    monkeypatch.setenv("CI_RUNNER_SANDBOX_UID", "1234:4321")
    assert sandbox.sandbox_ids() == (1234, 4321)
    monkeypatch.setenv("CI_RUNNER_SANDBOX_UID", "0")
    with pytest.raises(UsageError, match="not root"):
        sandbox.sandbox_ids()
    monkeypatch.setenv("CI_RUNNER_SANDBOX_UID", "no-such-user-here")
    with pytest.raises(UsageError, match="names no user"):
        sandbox.sandbox_ids()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert sandbox.sandbox_ids() is None


# ---------------------------------------------------------------------------
# Real bubblewrap sandboxes, attacked


@dataclass
class Jail:
    """A run's world: a writable worktree, and a CI_RUNNER_HOME it must not see."""

    worktree: Path
    ci_home: Path
    secret: Path
    marker: Path  # a file in the host's /tmp
    ids: tuple[int, int] | None

    def policy(self, **changes: Any) -> Policy:
        uid, gid = self.ids or (None, None)
        fields: dict[str, Any] = {"rw": (self.worktree,), "uid": uid, "gid": gid, **changes}
        return Policy(**fields)

    def run(self, script: str, *, policy: Policy | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``sh -c script`` in the sandbox, started the way ci-runner does: as this
        process's own user (root here, when the tests run as root), with no
        ``preexec_fn``; the argv itself drops to the sandbox user."""
        argv = [*bwrap_argv(policy or self.policy()), "sh", "-c", script]
        return subprocess.run(argv, capture_output=True, text=True, timeout=10,
                              cwd=self.worktree, env=env or SANDBOX_ENV, check=False,
                              stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def bwrap_works() -> None:
    if shutil.which("bwrap") is None:
        unavailable("bubblewrap is not installed (apt-get install bubblewrap)")
    sandbox.probe.cache_clear()
    level = sandbox.probe("auto")
    if level.kind != "bwrap":
        unavailable(f"bubblewrap cannot sandbox here: {level.reason}")


@pytest.fixture
def jail(bwrap_works: None) -> Iterator[Jail]:
    # In the host's /tmp (pytest's tmp_path would show up in the sandbox's /tmp listing),
    # in a 0700 dir like a CI_RUNNER_HOME under /root: root's bwrap mounts the worktree
    # anyway and makes the dirs above it walkable for the sandbox user, inside only.
    top = Path(tempfile.mkdtemp(prefix="ci-runner-sandbox-", dir="/tmp"))
    try:
        top.chmod(0o700)
        worktree, ci_home = top / "worktree", top / "ci-home"
        worktree.mkdir()
        (worktree / ".git").mkdir()
        (ci_home / "secrets").mkdir(parents=True)
        secret = ci_home / "secrets" / "webhook.yaml"
        # World-readable on purpose: only the sandbox may keep it from the command.
        secret.write_text("TOKEN: hunter2\n")
        secret.chmod(0o644)
        marker = top.with_name(top.name + "-marker")
        marker.write_text("host tmp\n")
        ids = sandbox.sandbox_ids()
        if ids is not None:
            for path in (worktree, worktree / ".git"):
                os.chown(path, *ids)
        yield Jail(worktree, ci_home, secret, marker, ids)
    finally:
        shutil.rmtree(top, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            top.with_name(top.name + "-marker").unlink()


def test_secrets_in_ci_runner_home_are_not_there(jail: Jail) -> None:
    assert jail.secret.stat().st_mode & 0o004  # readable by anyone on the host
    done = jail.run(f"cat {jail.secret}; ls {jail.ci_home}; ls {jail.ci_home.parent}")
    assert "hunter2" not in done.stdout
    assert done.stdout.split() == ["worktree"]  # the top dir holds only what was mounted
    assert "No such file" in done.stderr


def test_host_tmp_is_replaced(jail: Jail) -> None:
    done = jail.run(f"test -e {jail.marker} && echo visible; ls -A /tmp")
    assert "visible" not in done.stdout
    assert done.stdout.split() == [jail.worktree.parts[2]]  # only the worktree's path


def test_only_the_worktree_is_writable(jail: Jail) -> None:
    wt = jail.worktree
    done = jail.run(
        f"echo built > {wt}/out && echo wt-ok;"
        f" for p in /usr/x /etc/x /x /home/x {wt}/.git/x {jail.ci_home}/x; do"
        "   touch $p 2>/dev/null && echo wrote $p; done;"
        " touch /tmp/scratch && echo tmp-ok; touch /dev/shm/x && echo shm-ok",
        policy=jail.policy(ro=(wt / ".git",)),  # a read-only dir inside the worktree
    )
    assert done.stdout.split("\n")[0] == "wt-ok", done.stderr
    assert "wrote" not in done.stdout
    # Private tmpfs, writable by the sandbox user and gone with the sandbox.
    assert "tmp-ok" in done.stdout and "shm-ok" in done.stdout, done.stderr
    assert (wt / "out").read_text() == "built\n"
    assert not Path("/tmp/scratch").exists()
    if jail.ids is not None:  # written by the sandbox user, on the host too
        assert ((wt / "out").stat().st_uid, (wt / "out").stat().st_gid) == jail.ids


def test_proc_shows_only_the_sandbox(jail: Jail, monkeypatch: pytest.MonkeyPatch) -> None:
    token = secrets.token_hex(8)
    monkeypatch.setenv("CI_RUNNER_TEST_TOKEN", token)  # in this (host) process's environ
    done = jail.run("ls /proc; echo ENV; cat /proc/[0-9]*/environ | tr '\\0' '\\n';"
                    f" echo END; cat /proc/{os.getpid()}/environ")
    pids, rest = done.stdout.split("ENV\n")
    pids_seen = {p for p in pids.split() if p.isdigit()}
    assert str(os.getpid()) not in pids_seen
    assert len(pids_seen) <= 4  # bwrap's init, sh, cat: nothing of the host
    environ, _ = rest.split("END\n")
    assert token not in done.stdout
    # Every process there got the sandbox's environment (and what sh adds to it).
    names = {line.partition("=")[0] for line in environ.splitlines() if line}
    assert names <= {*SANDBOX_ENV, "PWD", "OLDPWD", "SHLVL", "_"}
    assert "No such file" in done.stderr


def test_no_run_and_no_docker_socket(jail: Jail) -> None:
    done = jail.run("for p in /run /var/run /var/run/docker.sock /run/docker.sock; do"
                    "  test -e $p && echo present $p; done; echo done")
    assert done.stdout == "done\n"


def test_network_false_has_only_loopback(jail: Jail) -> None:
    def interfaces(policy: Policy) -> set[str]:
        done = jail.run("tail -n +3 /proc/net/dev", policy=policy)
        return {line.split(":")[0].strip() for line in done.stdout.splitlines()}

    assert interfaces(jail.policy(network=False)) == {"lo"}
    host = {line.split(":")[0].strip()
            for line in Path("/proc/net/dev").read_text().splitlines()[2:]}
    assert interfaces(jail.policy(network=True)) == host


def test_runs_as_the_unprivileged_sandbox_user(jail: Jail) -> None:
    need_root()
    assert jail.ids is not None
    uid, gid = jail.ids
    wt = jail.worktree
    root_only = wt / "root-only"
    root_only.write_text("root's\n")
    root_only.chmod(0o600)
    # A setuid-root program (a copy of id, which prints the effective uid) on the host...
    suid = wt / "suid-id"
    shutil.copy2("/usr/bin/id", suid)
    os.chown(suid, 0, 0)
    suid.chmod(0o4755)
    if not os.statvfs(wt).f_flag & os.ST_NOSUID:
        # ...really makes an unprivileged user root outside the sandbox (the control).
        outside = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", str(suid), "-u"],
            capture_output=True, text=True, timeout=10, check=False)
        assert outside.stdout.split() == ["0"], outside.stderr
    done = jail.run(
        "id -u; id -g; id -G; echo x > written; cat root-only;"
        " echo CAPS; grep -E '^(Cap|NoNewPrivs)' /proc/self/status; echo SUID;"
        " ./suid-id -u; setpriv --reuid=0 true && echo became-root; echo END")
    ids_part, rest = done.stdout.split("CAPS\n")
    assert ids_part.split() == [str(uid), str(gid), str(gid)], done.stderr
    assert "Permission denied" in done.stderr  # root's 0600 file: no CAP_DAC_OVERRIDE
    owner = (wt / "written").stat()
    assert (owner.st_uid, owner.st_gid) == (uid, gid)  # on the host, not only inside
    status, rest = rest.split("SUID\n")
    # No capability in any set, none to get back: the bounding set is empty too.
    assert capabilities(status) == dict.fromkeys(CAPS, 0), status
    assert "NoNewPrivs:\t1" in status
    # The setuid program runs as the sandbox user, and setpriv cannot go back to root.
    assert rest.split("\n")[0] == str(uid), done.stdout
    assert "became-root" not in rest and rest.endswith("END\n")
    assert "setresuid failed" in done.stderr


def test_a_command_path_cannot_choose_what_runs_as_root(jail: Jail) -> None:
    # A step's environment may set PATH, to its worktree for instance: neither bwrap
    # (looked up by the launcher, as root) nor setpriv (looked up by root's bwrap)
    # may come from there.
    fake = jail.worktree / "bin"
    fake.mkdir()
    for name in ("bwrap", "setpriv"):
        (fake / name).write_text(f"#!/bin/sh\ntouch {jail.worktree}/ran-{name}\n"
                                 f"echo fake {name} as $(id -u)\n")
        (fake / name).chmod(0o755)
    if jail.ids is not None:
        for path in (fake, *fake.iterdir()):
            os.chown(path, *jail.ids)
    done = jail.run("id -u", env={**SANDBOX_ENV, "PATH": f"{fake}:.:/usr/bin:/bin"})
    assert done.stdout.split() == [str(jail.ids[0] if jail.ids else os.getuid())], (
        done.stdout, done.stderr)
    assert not list(jail.worktree.glob("ran-*"))


def test_a_toolchain_under_a_closed_dir_is_mounted_for_the_sandbox_user(jail: Jail) -> None:
    need_root()
    assert jail.ids is not None
    private = jail.worktree.parent / "root-home"  # like a 0700 /root holding ~/.pyenv
    (private / ".pyenv" / "bin").mkdir(parents=True)
    tool = private / ".pyenv" / "bin" / "tool"
    tool.write_text("#!/bin/sh\necho tool ran as $(id -u)\n")
    tool.chmod(0o755)
    (private / ".ssh").mkdir()
    (private / ".ssh" / "id_ed25519").write_text("private key\n")
    private.chmod(0o700)
    # The sandbox user could not walk there on the host (0700, root's)...
    done = jail.run(f"{tool}; stat -c %a {private}; ls -A {private}; cat {private}/.ssh/*",
                    policy=jail.policy(ro=(private / ".pyenv",)))
    # ...but root's bwrap mounted it, under a parent made 0755 in the sandbox only,
    # which holds the mount and nothing else of root's home.
    assert done.stdout.split("\n")[:3] == [f"tool ran as {jail.ids[0]}", "755", ".pyenv"], (
        done.stdout, done.stderr)
    assert "private key" not in done.stdout and "No such file" in done.stderr
    assert private.stat().st_mode & 0o777 == 0o700  # the host's dir is untouched
    assert sorted(p.name for p in private.iterdir()) == [".pyenv", ".ssh"]


def test_python_paths_are_enough_to_run_ci_runner_inside(jail: Jail) -> None:
    # This Python may live under a 0700 dir (/root/.pyenv): root's bwrap mounts it and
    # the sandbox user runs it, with no fallback to another uid.
    ro = tuple(python_paths(forbidden=[Path.home(), jail.ci_home]))
    argv = [*bwrap_argv(jail.policy(ro=ro)), sys.executable, "-c",
            "import os, ci_runner.sandbox, ci_runner.starters; print('imported', os.getuid())"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False,
                          cwd=jail.worktree, env={**SANDBOX_ENV, "PYTHONDONTWRITEBYTECODE": "1"},
                          stdin=subprocess.DEVNULL)
    uid = jail.ids[0] if jail.ids else os.getuid()
    assert done.stdout == f"imported {uid}\n", done.stderr


def test_dies_with_its_parent(jail: Jail) -> None:
    tag = f"{3000 + secrets.randbelow(500)}.{secrets.randbelow(10**6)}"
    argv = [*bwrap_argv(jail.policy()), "sleep", tag]
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]);"
                               " time.sleep(60)", *argv],
        cwd=jail.worktree, env=SANDBOX_ENV, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        sleeper = None
        while sleeper is None and time.monotonic() < deadline:
            sleeper = _find_process(["sleep", tag])
            time.sleep(0.02)
        assert sleeper is not None, "the sandboxed command never started"
        if jail.ids is not None:  # setpriv exec'd it as the sandbox user
            assert Path(f"/proc/{sleeper}").stat().st_uid == jail.ids[0]
        parent.kill()
        parent.wait(timeout=5)
        deadline = time.monotonic() + 5
        while alive(sleeper) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(sleeper)
    finally:
        parent.kill()
        parent.wait(timeout=5)


def _find_process(cmdline: list[str]) -> int | None:
    want = "\0".join(cmdline).encode() + b"\0"
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if (proc / "cmdline").read_bytes() == want:
                    return int(proc.name)
    return None


# ---------------------------------------------------------------------------
# Landlock, in forked children


@pytest.fixture(scope="module")
def abi() -> int:
    found = sandbox.landlock_abi()
    if found < 1:
        unavailable("this kernel has no Landlock")
    return found


def attempt(action: Callable[[], object]) -> str:
    """'ok', or the name of the OSError subclass the action raised."""
    try:
        action()
    except OSError as exc:
        return type(exc).__name__
    return "ok"


def landlocked(checks: Callable[[], dict[str, Any]], *, ro: list[Path], rw: list[Path],
               network: bool = True, confine: bool = True,
               nocaps: bool = False) -> dict[str, Any]:
    """Run ``checks`` in a forked child after ``drop_capabilities`` (when ``nocaps``: a
    root ci-runner's way) and ``landlock_restrict`` (unless not ``confine``: the
    control); the child's results, passed back as JSON."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child reports through the pipe)
        try:
            os.close(read)
            if nocaps:
                sandbox.drop_capabilities()
            result: dict[str, Any] = {"abi": sandbox.landlock_restrict(
                ro=ro, rw=rw, network=network) if confine else 0}
            result.update(checks())
        except BaseException:
            result = {"error": traceback.format_exc()}
        with contextlib.suppress(BaseException):
            os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    chunks = []
    try:
        while select.select([read], [], [], 10)[0]:
            chunk = os.read(read, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read)
        with contextlib.suppress(ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    result = json.loads(b"".join(chunks) or b'{"error": "no answer"}')
    assert "error" not in result, result["error"]
    return result


@pytest.fixture
def outside(tmp_path: Path) -> tuple[Path, Path]:
    """(a writable dir to grant, a secret file granted nothing)."""
    (tmp_path / "rw").mkdir()
    secret = tmp_path / "ci-home" / "secret"
    secret.parent.mkdir()
    secret.write_text("hunter2")
    return tmp_path / "rw", secret


def test_landlock_confines_files(abi: int, outside: tuple[Path, Path]) -> None:
    rw, secret = outside
    ro_dir = secret.parent.with_name("ro")
    ro_dir.mkdir()
    (ro_dir / "readme").write_text("hello")
    defaults_ro, defaults_rw = sandbox.landlock_defaults()

    def checks() -> dict[str, Any]:
        return {
            "secret": attempt(secret.read_text),
            "secret_stat": attempt(secret.stat),
            "listing": attempt(lambda: list(secret.parent.iterdir())),
            "write_rw": attempt(lambda: (rw / "made").write_text("x")),
            "rename_rw": attempt(lambda: (rw / "made").rename(rw / "moved")),
            "read_ro": attempt((ro_dir / "readme").read_text),
            "write_ro": attempt(lambda: (ro_dir / "new").write_text("x")),
            "proc_self": attempt(Path("/proc/self/status").read_text),
            "dev_null": attempt(lambda: Path("/dev/null").write_text("x")),
            "etc_shadow": attempt(Path("/etc/shadow").read_bytes),
            # An exec'd program inherits the domain.
            "cat": subprocess.run(["cat", str(secret)], capture_output=True,
                                  check=False).returncode,
        }

    result = landlocked(checks, ro=[*defaults_ro, ro_dir, *python_paths(forbidden=[])],
                        rw=[*defaults_rw, rw])
    assert result["abi"] == abi
    assert result["secret"] == "PermissionError"
    assert result["listing"] == "PermissionError"
    assert result["secret_stat"] == "ok"  # documented gap: Landlock refuses, it does not hide
    assert result["write_rw"] == result["rename_rw"] == "ok"
    assert (rw / "moved").read_text() == "x"
    assert result["read_ro"] == "ok" and result["write_ro"] == "PermissionError"
    assert result["proc_self"] == "ok" and result["dev_null"] == "ok"
    assert result["etc_shadow"] == "PermissionError"
    assert result["cat"] != 0


@contextlib.contextmanager
def same_uid_process(*, nocaps: bool) -> Iterator[int]:
    """A process of our uid outside any Landlock domain, dumpable, and without
    capabilities when ``nocaps`` (then, as root, only Landlock stands between it and a
    confined capability-less child: the kernel also refuses a reader that lacks some
    of the target's capabilities)."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover
        try:
            if nocaps:
                sandbox.drop_capabilities()
            ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
            os.write(ready_w, b"x")
            time.sleep(30)
        finally:
            os._exit(0)
    try:
        os.close(ready_w)
        assert select.select([ready_r], [], [], 10)[0] and os.read(ready_r, 1) == b"x"
        yield pid
    finally:
        os.close(ready_r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_landlock_keeps_other_processes_out(abi: int) -> None:
    # As root the children keep uid 0 and drop every capability, as ci-runner's do: a
    # reader keeping CAP_PERFMON or CAP_SYS_PTRACE reads any process's environ and maps
    # whatever Landlock says (see landlock_defaults).
    root = os.geteuid() == 0
    parent = os.getpid()
    name = f"\0ci-runner-test-{secrets.token_hex(4)}"
    with same_uid_process(nocaps=root) as target, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as abstract, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        abstract.bind(name)
        abstract.listen()
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        port = tcp.getsockname()[1]

        def checks() -> dict[str, Any]:
            def connect(family: int, address: Any) -> None:
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    s.connect(address)

            return {
                "environ": attempt(Path(f"/proc/{target}/environ").read_bytes),
                "mem": attempt(lambda: Path(f"/proc/{target}/mem").open("rb").close()),
                "cmdline": attempt(Path(f"/proc/{target}/cmdline").read_bytes),
                "kill": attempt(lambda: os.kill(target, 0)),
                "parent_environ": attempt(Path(f"/proc/{parent}/environ").read_bytes),
                "parent_kill": attempt(lambda: os.kill(parent, 0)),
                "abstract": attempt(lambda: connect(socket.AF_UNIX, name)),
                "tcp": attempt(lambda: connect(socket.AF_INET, ("127.0.0.1", port))),
            }

        ro, rw = sandbox.landlock_defaults()
        free = landlocked(checks, ro=ro, rw=rw, nocaps=root, confine=False)
        confined = landlocked(checks, ro=ro, rw=rw, nocaps=root)
        offline = landlocked(checks, ro=ro, rw=rw, nocaps=root, network=False)

    # The control: unconfined, the same uid reaches all of it (as root, but the test
    # process's environ: it keeps capabilities a capability-less reader lacks).
    # (mem is left out: Yama's ptrace_scope=1, Ubuntu's default, refuses it anyway.)
    own = {k: v for k, v in free.items()
           if k not in ("abi", "mem") and not (root and k == "parent_environ")}
    assert set(own.values()) == {"ok"}, free
    # Landlock refuses ptrace access outside the domain, and with it these /proc files.
    assert confined["environ"] == confined["mem"] == "PermissionError"
    assert confined["parent_environ"] == "PermissionError"
    assert confined["cmdline"] == "ok"  # documented gap: keep secrets off command lines
    assert confined["tcp"] == "ok"
    if abi >= 6:
        assert confined["kill"] == confined["parent_kill"] == "PermissionError"
        assert confined["abstract"] == "PermissionError"
    if abi >= 4:
        assert offline["tcp"] == "PermissionError"


def test_landlock_as_root_keeps_uid_0_without_any_capability(
        abi: int, outside: tuple[Path, Path]) -> None:
    need_root()
    rw, secret = outside
    # Another user's private file, in a directory the rules grant: only DAC stands in
    # the way, which uid 0 passes with CAP_DAC_OVERRIDE and fails without it.
    theirs = rw / "theirs"
    theirs.write_text("someone else's")
    theirs.chmod(0o600)
    os.chown(theirs, 65534, 65534)
    mine = rw / "mine"
    mine.write_text("x")
    defaults_ro, defaults_rw = sandbox.landlock_defaults()

    def checks() -> dict[str, Any]:
        status = Path("/proc/self/status").read_text()
        child = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True,
                               check=False)
        return {
            "uid": [os.getuid(), os.geteuid()],
            "securebits": ctypes.CDLL(None).prctl(PR_GET_SECUREBITS, 0, 0, 0, 0),
            "caps": capabilities(status),
            "child_caps": capabilities(child.stdout),
            "child_uid": next(line.split()[1:3] for line in child.stdout.splitlines()
                              if line.startswith("Uid:")),
            "secret": attempt(secret.read_text),  # outside the rules
            "theirs": attempt(theirs.read_text),
            "setuid": attempt(lambda: os.setuid(65534)),
            "setgroups": attempt(lambda: os.setgroups([])),
            "chown": attempt(lambda: os.chown(mine, 65534, 65534)),
            "pid1_environ": attempt(Path("/proc/1/environ").read_bytes),
        }

    ro, rw_paths = [*defaults_ro], [*defaults_rw, rw]
    control = landlocked(checks, ro=ro, rw=rw_paths, confine=False)  # root as it is
    confined = landlocked(checks, ro=ro, rw=rw_paths, nocaps=True)
    assert control["caps"]["CapEff"] != 0 and control["theirs"] == control["secret"] == "ok"
    assert confined["abi"] == abi
    assert confined["uid"] == [0, 0] and confined["child_uid"] == ["0", "0"]
    # No capability now, and none an exec'd program gets back (root's exec would
    # grant a full set, but securebits NOROOT is set and the bounding set is empty).
    assert confined["caps"] == dict.fromkeys(CAPS, 0)
    assert confined["child_caps"] == dict.fromkeys(CAPS, 0)
    assert confined["securebits"] & SECBIT_NOROOT_LOCKED == SECBIT_NOROOT_LOCKED
    # Outside its rules root is refused like anyone; inside them uid 0 is one more user.
    assert confined["secret"] == "PermissionError"
    assert confined["theirs"] == "PermissionError"
    assert confined["setuid"] == confined["setgroups"] == confined["chown"] == "PermissionError"
    # Another root process (init, with every capability) is out of reach.
    assert confined["pid1_environ"] == "PermissionError"
    assert mine.stat().st_uid == 0


# ---------------------------------------------------------------------------
# A machine without user namespaces, simulated with seccomp


def test_without_namespaces_bwrap_fails_and_probe_picks_landlock(bwrap_works: None) -> None:
    # nouserns refuses user namespaces, and as root every namespace (Docker's default
    # seccomp profile without CAP_SYS_ADMIN): root's bwrap, which needs no user
    # namespace, is refused too, and probe must notice either way.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ids = sandbox.sandbox_ids()
    for policy in (Policy(), Policy(uid=ids[0], gid=ids[1]) if ids else Policy(uid=1234)):
        refused = subprocess.run(
            [sys.executable, str(NOUSERNS), *bwrap_argv(policy), "true"],
            capture_output=True, text=True, timeout=10, check=False, env=env)
        assert refused.returncode != 0 and "namespace" in refused.stderr, policy
    script = (
        "import json, threading\n"
        "from ci_runner.errors import UsageError\n"
        "from ci_runner.sandbox import probe\n"
        "level = probe('auto')\n"
        "try:\n"
        "    probe('bwrap')\n"
        "    insisted = 'no error'\n"
        "except UsageError as exc:\n"
        "    insisted = exc.message\n"
        # clone3 fails with ENOSYS: threads must still start through clone.
        "t = threading.Thread(target=lambda: None); t.start(); t.join()\n"
        "print(json.dumps({'kind': level.kind, 'reason': level.reason,"
        " 'insisted': insisted}))\n"
    )
    done = subprocess.run([sys.executable, str(NOUSERNS), sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=20, check=False, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    if sandbox.landlock_abi():
        assert result["kind"] == "landlock"
        assert result["reason"].startswith("user namespaces are refused here (bwrap:")
    assert "user namespaces" in result["insisted"] and "--sandbox landlock" in result["insisted"]


def test_a_path_entry_we_may_not_look_at_is_skipped(monkeypatch, tmp_path: Path) -> None:
    """Another user's PATH entry left in the environment (su without -l, say) must not
    stop the run: found as a real bug, where /root/.cargo/bin raised PermissionError."""
    closed = tmp_path / "closed" / "bin"
    real_is_dir = Path.is_dir

    def is_dir(self: Path) -> bool:
        if self == closed:
            raise PermissionError(13, "Permission denied", str(self))
        return real_is_dir(self)

    monkeypatch.setattr(Path, "is_dir", is_dir)
    assert toolchain_paths(f"{closed}:/usr/bin", forbidden=[]) == []
