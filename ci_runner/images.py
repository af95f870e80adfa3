"""Builds the sandbox images heavy steps run in, offline: no image registry is assumed.

Two root images come from the host's own packages through ``docker import``:
``ci-runner/busybox`` (busybox-static, for the fastest tests) and
``ci-runner/rootfs-debian`` (a ``debootstrap --variant=minbase`` root file system from
the host's configured Debian mirror). Each ``sandbox_images/NAME/Dockerfile`` then
builds ``FROM ${BASE_IMAGE}``, tagged ``ci-runner/NAME:latest``; the default of its
``ARG BASE_IMAGE=...`` line names its parent, which is built first when missing.

A step's ``image="python"`` resolves to ``ci-runner/python:latest`` and is built on
first use (``ensure``); any other reference is used as is.

``CI_RUNNER_IMAGE_PREFIX`` puts the images built, listed and used under another
namespace (``ci-runner-test/`` for the test suite, so that its builds never replace
or remove a user's own ``ci-runner/*`` images). The Dockerfiles and pipelines keep
naming them ``ci-runner/NAME``: such a name means the image of that prefix.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ci_runner import paths
from ci_runner.errors import ExecutorError

if TYPE_CHECKING:
    from docker import DockerClient

def _sandbox_dir() -> Path:
    # Installed: shipped inside the package; in a source checkout: the top-level folder.
    shipped = Path(__file__).resolve().parent / "sandbox_images"
    return shipped if shipped.is_dir() else Path(__file__).resolve().parents[1] / "sandbox_images"


SANDBOX_DIR = _sandbox_dir()
"""The shipped Dockerfiles, one directory per image (found next to the package in a checkout)."""

CANONICAL_PREFIX = "ci-runner/"
"""How the Dockerfiles (``ARG BASE_IMAGE=``) and pipelines name the sandbox images."""
PREFIX_ENV = "CI_RUNNER_IMAGE_PREFIX"
_VALID_PREFIX = re.compile(r"[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*/")
BUSYBOX = "busybox"
ROOTFS = "rootfs-debian"
ROOT_IMAGES = (BUSYBOX, ROOTFS)
"""Images made from a root file system with ``docker import``, not from a Dockerfile."""

IMAGE_LABEL = "ci-runner.image"

Log = Callable[[str], None]

_BASE_ARG = re.compile(r"^\s*ARG\s+BASE_IMAGE\s*=\s*(\S+)", re.MULTILINE)
_DEFAULT_MIRROR = "http://deb.debian.org/debian"
_DEFAULT_SUITE = "stable"
_IMPORT_CHUNK = 1 << 20
_PT_INTERP = 3
_ROOT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def prefix() -> str:
    """The namespace of the images built here: ``CI_RUNNER_IMAGE_PREFIX``, else
    ``ci-runner/``. Read at each call, so one process can be pointed elsewhere."""
    value = os.environ.get(PREFIX_ENV, "").strip()
    if not value:
        return CANONICAL_PREFIX
    if not _VALID_PREFIX.fullmatch(value):
        raise ExecutorError(
            f"{PREFIX_ENV}={value!r} is not an image repository prefix: give lower-case"
            " path components ending with '/', such as 'ci-runner-test/'", image=value)
    return value


def tag_for(name: str) -> str:
    """The tag of the image built for ``name``: ``ci-runner/NAME:latest`` (under
    ``CI_RUNNER_IMAGE_PREFIX`` when it is set)."""
    return f"{prefix()}{name}:latest"


def known_names() -> list[str]:
    """Every name ``build`` knows: the root images, then each ``sandbox_images/`` directory."""
    sandboxes = (
        sorted(p.parent.name for p in SANDBOX_DIR.glob("*/Dockerfile"))
        if SANDBOX_DIR.is_dir()
        else []
    )
    return [*ROOT_IMAGES, *(n for n in sandboxes if n not in ROOT_IMAGES)]


def resolve(image: str) -> str:
    """``"python"`` (or ``"ci-runner/python"``) -> ``"ci-runner/python:latest"`` for a
    name ``build`` knows, under the active prefix; else ``image``."""
    if image in known_names():
        return tag_for(image)
    short = _short_name(image)
    return tag_for(short) if short is not None and short in known_names() else image


def build(
    name: str | None = None,
    *,
    client: DockerClient | None = None,
    rebuild: bool = False,
    log: Log | None = None,
) -> list[str]:
    """Build ``name`` (every known image when None); return the tags actually built.

    Missing parents are built first. A root image that exists is kept unless
    ``rebuild``; a Dockerfile image is always rebuilt (Docker's layer cache makes
    that cheap), without the cache when ``rebuild``. ``log`` receives progress lines.
    """
    if client is None:
        from ci_runner.executors.container import docker_client

        client = docker_client()
    names = known_names()
    if name is not None and name not in names:
        raise ExecutorError(
            f"no sandbox image named {name!r}: known are {', '.join(names)} "
            f"(add {SANDBOX_DIR / name / 'Dockerfile'} to make one)",
            image=name,
        )
    say: Log = log or (lambda _line: None)
    built: list[str] = []
    with _build_lock():
        for target in names if name is None else [name]:
            for parent in _parents(target):
                if not _exists(client, tag_for(parent)):
                    built.append(_build_one(client, parent, rebuild=False, say=say))
            if target in ROOT_IMAGES and _exists(client, tag_for(target)) and not rebuild:
                say(f"{tag_for(target)} exists; kept (rebuild to remake it)")
                continue
            built.append(_build_one(client, target, rebuild=rebuild, say=say))
    return built


def list_images(client: DockerClient | None = None) -> list[dict[str, Any]]:
    """The ci-runner images present: name (short), reference, tag, id, size (bytes), created."""
    if client is None:
        from ci_runner.executors.container import docker_client

        client = docker_client()
    rows: list[dict[str, Any]] = []
    ours = prefix()
    for image in client.images.list(filters={"reference": f"{ours}*"}):
        for reference in image.tags:
            if not reference.startswith(ours):
                continue
            repository, _, tag = reference.rpartition(":")
            rows.append({
                "name": repository.removeprefix(ours),
                "reference": reference,
                "tag": tag,
                "id": image.short_id,
                "size": int(image.attrs.get("Size", 0)),
                "created": str(image.attrs.get("Created", "")),
            })
    return sorted(rows, key=lambda row: (row["name"], row["tag"]))


def ensure(image: str, client: DockerClient, *, log: Log | None = None) -> str:
    """Make sure ``image`` is present and return its reference.

    A known name is built when missing; any other reference is pulled, and when that
    fails too the ``ExecutorError`` names the image and how to get it.
    """
    from docker.errors import DockerException

    reference = resolve(image)
    if _exists(client, reference):
        return reference
    short = _short_name(reference)
    if short is not None and short in known_names():
        build(short, client=client, log=log)
        return reference
    if short is not None:
        raise ExecutorError(
            f"image {reference} is missing and there is no sandbox_images/{short}: "
            f"known are {', '.join(known_names())}; `ci-runner images build NAME` builds one",
            image=reference,
        )
    try:
        client.images.pull(reference)
    except DockerException as exc:
        reason = _one_line(str(exc))
        raise ExecutorError(
            f"image {reference} is not present and could not be pulled ({reason}): "
            f"no registry reachable? docker pull or docker load it first, or use a sandbox "
            f"image ({', '.join(known_names())}; `ci-runner images build NAME`)",
            image=reference,
        ) from exc
    return reference


def debian_source(
    sources: Path = Path("/etc/apt"),
) -> tuple[str, str, list[tuple[str, str]]]:
    """The mirror and suite debootstrap uses, and the apt lines the image keeps.

    Read from the host's apt configuration (one-line and deb822 files), so the image
    uses the mirror the host already reaches; ``CI_RUNNER_DEBIAN_MIRROR`` and
    ``CI_RUNNER_DEBIAN_SUITE`` override, and ``deb.debian.org`` ``stable`` is the fallback.
    """
    entries = [
        (uri.rstrip("/"), suite)
        for uri, suite in _apt_entries(sources)
        if "debian" in uri and "debian-ports" not in uri
    ]
    main = [(uri, suite) for uri, suite in entries if "-" not in suite and "security" not in uri]
    mirror, suite = main[0] if main else (_DEFAULT_MIRROR, _DEFAULT_SUITE)
    mirror = os.environ.get("CI_RUNNER_DEBIAN_MIRROR", mirror)
    suite = os.environ.get("CI_RUNNER_DEBIAN_SUITE", suite)
    # Keep the host's updates and security lines that belong to the same release.
    keep = [(mirror, suite)]
    keep += [(uri, s) for uri, s in entries if s.startswith(f"{suite}-") and (uri, s) not in keep]
    return mirror, suite, keep


def _parents(name: str) -> list[str]:
    """The known images ``name`` builds on, farthest first."""
    chain: list[str] = []
    current = _parent(name)
    while current is not None and current not in chain:
        chain.insert(0, current)
        current = _parent(current)
    return chain


def _parent(name: str) -> str | None:
    if name in ROOT_IMAGES:
        return None
    short = _short_name(_base_image(name))
    return short if short in known_names() else None


def _base_image(name: str) -> str:
    """The default of the Dockerfile's ``ARG BASE_IMAGE=``, a sandbox image's under the
    active prefix; the Debian root image if none."""
    match = _BASE_ARG.search((SANDBOX_DIR / name / "Dockerfile").read_text(encoding="utf-8"))
    return resolve(match.group(1).strip("\"'")) if match else tag_for(ROOTFS)


def _short_name(reference: str) -> str | None:
    """``"ci-runner/python:latest"`` -> ``"python"`` (also under the active prefix);
    None for images that are not ours."""
    for ours in dict.fromkeys((prefix(), CANONICAL_PREFIX)):
        if reference.startswith(ours):
            name, _, tag = reference.removeprefix(ours).partition(":")
            if tag in ("", "latest") and name and "/" not in name and "@" not in name:
                return name
    return None


def _exists(client: DockerClient, reference: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        client.images.get(reference)
    except ImageNotFound:
        return False
    return True


def _build_one(client: DockerClient, name: str, *, rebuild: bool, say: Log) -> str:
    from docker.errors import DockerException

    tag = tag_for(name)
    say(f"building {tag}")
    started = time.monotonic()
    try:
        previous = client.images.get(tag).id
    except DockerException:
        previous = None
    if name == BUSYBOX:
        _import_busybox(client, tag)
    elif name == ROOTFS:
        _import_debian(client, tag, say)
    else:
        _docker_build(client, name, tag, rebuild=rebuild, say=say)
    if previous is not None and previous != client.images.get(tag).id:
        # The old image lost its tag: drop it unless something still uses it.
        with contextlib.suppress(DockerException):
            client.images.remove(previous, noprune=False)
    say(f"built {tag} in {time.monotonic() - started:.1f}s")
    return tag


def _docker_build(client: DockerClient, name: str, tag: str, *, rebuild: bool, say: Log) -> None:
    from docker.errors import APIError

    base = _base_image(name)
    context = SANDBOX_DIR / name
    lines: list[str] = []
    try:
        # Host networking for the build alone: the Dockerfiles apt-get install, and
        # the engine may have no bridge (dockerd --bridge=none).
        for event in client.api.build(
            path=str(context), tag=tag, buildargs={"BASE_IMAGE": base},
            labels={IMAGE_LABEL: name}, network_mode="host", nocache=rebuild,
            rm=True, forcerm=True, decode=True,
        ):
            if "error" in event:
                raise _build_failed(name, context, str(event["error"]), lines)
            text = str(event.get("stream", "")).rstrip()
            if text:
                lines.append(text)
                say(text)
    except APIError as exc:
        raise _build_failed(name, context, _one_line(str(exc)), lines) from exc


def _build_failed(name: str, context: Path, reason: str, lines: list[str]) -> ExecutorError:
    tail = "\n".join(lines[-15:])
    return ExecutorError(
        f"building {tag_for(name)} from {context / 'Dockerfile'} failed: {_one_line(reason)}",
        image=tag_for(name), output_tail=tail,
    )


def _import_busybox(client: DockerClient, tag: str) -> None:
    """A root file system of busybox-static and its applet links, built in memory."""
    busybox = Path(shutil.which("busybox") or "/bin/busybox")
    if not busybox.is_file() or not _is_static(busybox):
        raise ExecutorError(
            f"{tag} needs a static busybox ({busybox} is missing or dynamically linked): "
            f"install Debian's busybox-static (apt-get install busybox-static)",
            image=tag,
        )
    applets = subprocess.run(
        [str(busybox), "--list-full"], check=True, capture_output=True, text=True,
    ).stdout.split()
    buffer = BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory, mode in (("bin", 0o755), ("sbin", 0o755), ("usr", 0o755),
                                ("usr/bin", 0o755), ("usr/sbin", 0o755), ("etc", 0o755),
                                ("root", 0o700), ("tmp", 0o1777), ("workspace", 0o755)):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        data = busybox.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, BytesIO(data))
        for applet in applets:
            if applet == "bin/busybox" or "/" not in applet:
                continue
            info = tarfile.TarInfo(applet)
            info.type, info.linkname = tarfile.SYMTYPE, "/bin/busybox"
            tar.addfile(info)
        for filename, text in (
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"
                           "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
            ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ):
            raw = text.encode()
            info = tarfile.TarInfo(filename)
            info.size, info.mode = len(raw), 0o644
            tar.addfile(info, BytesIO(raw))
    client.api.import_image_from_data(
        buffer.getvalue(), repository=tag.rpartition(":")[0], tag="latest",
        changes=["ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin", "ENV HOME=/tmp",
                 'CMD ["sh"]', f"LABEL {IMAGE_LABEL}={BUSYBOX}"],
    )


def _import_debian(client: DockerClient, tag: str, say: Log) -> None:
    """``debootstrap --variant=minbase`` into a temporary directory, then ``docker import``."""
    if shutil.which("debootstrap") is None:
        raise ExecutorError(
            f"{tag} is made with debootstrap, which is not installed: "
            f"apt-get install debootstrap (or run scripts/docker-engine.sh)",
            image=tag,
        )
    mirror, suite, sources = debian_source()
    root = Path(tempfile.mkdtemp(prefix="ci-runner-rootfs-"))
    try:
        say(f"debootstrap --variant=minbase {suite} from {mirror}")
        started = time.monotonic()
        result = subprocess.run(
            [*_root_prefix(), "debootstrap", "--variant=minbase", suite, str(root), mirror],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            check=False,
        )
        if result.returncode != 0:
            output = result.stdout.decode(errors="replace").strip().splitlines()
            tail = _one_line(output[-1]) if output else ""
            raise ExecutorError(
                f"debootstrap {suite} from {mirror} failed (exit {result.returncode}): {tail}; "
                f"set CI_RUNNER_DEBIAN_MIRROR / CI_RUNNER_DEBIAN_SUITE to change the source",
                image=tag,
            )
        say(f"debootstrap took {time.monotonic() - started:.1f}s")
        lines = "".join(f"deb {uri} {s} main\n" for uri, s in sources)
        _as_root(["sh", "-c", _FINISH_ROOTFS, "finish-rootfs", str(root), lines], check=True)
        with subprocess.Popen(
            [*_root_prefix(), "tar", "--numeric-owner", "-C", str(root), "-c", "."],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
        ) as tar:
            assert tar.stdout is not None
            client.api.import_image(
                src=_chunks(tar.stdout), repository=tag.rpartition(":")[0], tag="latest",
                changes=[f"ENV {_ROOT_PATH}", "ENV LANG=C.UTF-8", 'CMD ["bash"]',
                         f"LABEL {IMAGE_LABEL}={ROOTFS}"],
                stream_src=True,
            )
        if tar.returncode != 0:
            raise ExecutorError(f"packing the root file system of {tag} failed", image=tag)
    finally:
        _as_root(["rm", "-rf", "--one-file-system", str(root)])


# Run as root inside the fresh root file system: apt sources like the host's, no
# recommends and no docs for the Dockerfiles on top, and no caches in the image.
_FINISH_ROOTFS = r"""
set -e
root=$1
printf '%s' "$2" > "$root/etc/apt/sources.list"
printf '%s\n' 'APT::Install-Recommends "false";' 'APT::Install-Suggests "false";' \
    > "$root/etc/apt/apt.conf.d/90ci-runner"
printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
    > "$root/etc/dpkg/dpkg.cfg.d/90ci-runner-nodoc"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
mkdir -p "$root/workspace"
"""


def _chunks(stream: Any) -> Iterator[bytes]:
    while chunk := stream.read(_IMPORT_CHUNK):
        yield chunk


def _root_prefix() -> list[str]:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo"):
        return ["sudo", "-n"]
    raise ExecutorError(
        f"building {tag_for(ROOTFS)} needs root (debootstrap) and there is no sudo: "
        f"run `sudo ci-runner images build {ROOTFS}` once",
        image=tag_for(ROOTFS),
    )


def _as_root(argv: list[str], *, check: bool = False) -> None:
    subprocess.run([*_root_prefix(), *argv], check=check, stdin=subprocess.DEVNULL)


def _apt_entries(sources: Path) -> Iterator[tuple[str, str]]:
    """(uri, suite) of every ``deb`` source, from ``sources.list`` and ``*.list``/``*.sources``."""
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*.list"))]
    for file in files:
        with contextlib.suppress(OSError):
            for line in file.read_text(encoding="utf-8").splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    yield words[1], words[2]
    for file in sorted((sources / "sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            text = file.read_text(encoding="utf-8")
            for stanza in re.split(r"\n\s*\n", text):
                fields = _deb822(stanza)
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    for suite in fields.get("suites", "").split():
                        yield uri, suite


def _deb822(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = ""
    for line in stanza.splitlines():
        if line.startswith("#"):
            continue
        if line[:1].isspace() and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
    return fields


def _is_static(binary: Path) -> bool:
    """Whether an ELF executable has no program interpreter (so runs in an empty root)."""
    with binary.open("rb") as file:
        header = file.read(64)
        if header[:4] != b"\x7fELF":
            return False
        order: Literal["little", "big"] = "little" if header[5] == 1 else "big"
        # (program header offset, entry size, entry count) fields for ELF64 / ELF32.
        fields = ((0x20, 0x28), (0x36, 0x38), (0x38, 0x3A)) if header[4] == 2 else (
            (0x1C, 0x20), (0x2A, 0x2C), (0x2C, 0x2E))
        phoff, entsize, count = (int.from_bytes(header[a:b], order) for a, b in fields)
        for index in range(count):
            file.seek(phoff + index * entsize)
            if int.from_bytes(file.read(4), order) == _PT_INTERP:
                return False
    return True


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One build at a time per CI_RUNNER_HOME: parallel steps wanting one image build it once."""
    lock = paths.home() / "images.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def _main(argv: list[str] | None = None) -> int:
    """``python -m ci_runner.images build [NAME] [--rebuild] | list``: for scripts and CI."""
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python -m ci_runner.images", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="build the sandbox images (all, or NAME)")
    build_cmd.add_argument("name", nargs="?", choices=known_names())
    build_cmd.add_argument("--rebuild", action="store_true", help="remake even cached images")
    commands.add_parser("list", help="the ci-runner images present, as JSON lines")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            build(args.name, rebuild=args.rebuild, log=lambda line: print(line, flush=True))
        else:
            for row in list_images():
                print(json.dumps(row))
    except ExecutorError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
