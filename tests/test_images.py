"""Sandbox images: names, the host's Debian source, offline builds, and the shipped images at work.

The Debian-based tests build ``rootfs-debian`` (debootstrap, about half a minute)
and the Dockerfiles on top the first time; the engine keeps them afterwards.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ci_runner import images
from ci_runner.errors import ExecutorError
from ci_runner.executors import CommandSpec, ContainerExecutor, docker_client
from tests.test_container import require_engine

if TYPE_CHECKING:
    from docker import DockerClient


def test_known_names_are_the_root_images_then_the_sandbox_directories() -> None:
    names = images.known_names()
    assert names[:2] == ["busybox", "rootfs-debian"]
    assert {"base", "python", "postgres"} <= set(names)
    for name in names[2:]:
        assert "ARG BASE_IMAGE=" in (images.SANDBOX_DIR / name / "Dockerfile").read_text()


def test_resolve_maps_known_names_and_leaves_references_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(images.PREFIX_ENV)  # a user's machine: the real names
    assert images.resolve("python") == "ci-runner/python:latest"
    assert images.resolve("busybox") == "ci-runner/busybox:latest"
    reference = "registry.example/team/builder:1.2"
    assert images.resolve(reference) == reference
    assert images.resolve("ci-runner/python:latest") == "ci-runner/python:latest"
    assert images.resolve("ci-runner/python") == "ci-runner/python:latest"
    assert images.resolve("no-such-sandbox") == "no-such-sandbox"
    assert images.resolve("ci-runner/nope:latest") == "ci-runner/nope:latest"


def test_the_image_prefix_moves_every_sandbox_image(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(images.PREFIX_ENV, "ci-runner-test/")
    assert images.resolve("python") == "ci-runner-test/python:latest"
    # A pipeline's or Dockerfile's own spelling means the image of the active prefix.
    assert images.resolve("ci-runner/python:latest") == "ci-runner-test/python:latest"
    assert images._base_image("python") == "ci-runner-test/base:latest"
    assert images._base_image("base") == "ci-runner-test/rootfs-debian:latest"
    assert images._parents("python") == ["rootfs-debian", "base"]
    for bad in ("Upper/", "no-slash", "/lead/", "a//b/"):
        monkeypatch.setenv(images.PREFIX_ENV, bad)
        with pytest.raises(ExecutorError, match="CI_RUNNER_IMAGE_PREFIX="):
            images.tag_for("busybox")


def test_parents_come_from_the_dockerfiles_base_image_default() -> None:
    assert images._parents("python") == ["rootfs-debian", "base"]
    assert images._parents("base") == ["rootfs-debian"]
    assert images._parents("busybox") == []


def test_the_debian_source_is_read_from_the_hosts_apt_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CI_RUNNER_DEBIAN_MIRROR", raising=False)
    monkeypatch.delenv("CI_RUNNER_DEBIAN_SUITE", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian\n"
        "Suites: trixie trixie-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: trixie-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://other.example/debian\nSuites: sid\nEnabled: no\n"
    )
    (tmp_path / "sources.list.d" / "vendor.list").write_text(
        "deb [signed-by=/k.gpg] https://vendor.example/apt stable main\n"
    )
    mirror, suite, keep = images.debian_source(tmp_path)
    assert (mirror, suite) == ("http://mirror.example/debian", "trixie")
    assert keep == [
        ("http://mirror.example/debian", "trixie"),
        ("http://mirror.example/debian", "trixie-updates"),
        ("http://mirror.example/debian-security", "trixie-security"),
    ]
    monkeypatch.setenv("CI_RUNNER_DEBIAN_SUITE", "bookworm")
    assert images.debian_source(tmp_path)[:2] == ("http://mirror.example/debian", "bookworm")


def test_no_apt_configuration_falls_back_to_debian_stable(tmp_path: Path) -> None:
    assert images.debian_source(tmp_path)[:2] == ("http://deb.debian.org/debian", "stable")


def _elf(*program_headers: int) -> bytes:
    """A minimal ELF64 header followed by program headers of the given types."""
    header = bytearray(64)
    header[:7] = b"\x7fELF\x02\x01\x01"
    header[0x20:0x28] = (64).to_bytes(8, "little")
    header[0x36:0x38] = (56).to_bytes(2, "little")
    header[0x38:0x3A] = len(program_headers).to_bytes(2, "little")
    return bytes(header) + b"".join(t.to_bytes(4, "little") + bytes(52) for t in program_headers)


def test_static_binaries_are_told_from_dynamic_ones(tmp_path: Path) -> None:
    (tmp_path / "static").write_bytes(_elf(1, 1))
    (tmp_path / "dynamic").write_bytes(_elf(6, 3, 1))  # PHDR, INTERP, LOAD
    (tmp_path / "script").write_bytes(b"#!/bin/sh\n")
    assert images._is_static(tmp_path / "static")
    assert not images._is_static(tmp_path / "dynamic")
    assert not images._is_static(tmp_path / "script")
    assert not images._is_static(Path(sys.executable).resolve())


def test_no_engine_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(ExecutorError) as caught:
        docker_client(step="build", image="python")
    message = caught.value.message
    assert message.startswith("a Docker engine is needed for step 'build' (image=python)")
    assert f"DOCKER_HOST=unix://{tmp_path}/no-engine.sock" in message
    assert message.endswith("or drop image=")


def test_no_engine_fails_a_heavy_step_not_the_import(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    executor = ContainerExecutor("python", labels={"ci-runner.step": "unit"})
    with pytest.raises(ExecutorError, match=r"step 'unit' \(image=python\)"):
        asyncio.run(executor.run(CommandSpec(argv=["true"], cwd=tmp_path), lambda _t: None))


@pytest.fixture(scope="module")
def client() -> DockerClient:
    return require_engine()


def test_list_shows_the_built_images(client: DockerClient) -> None:
    images.build("busybox", client=client)
    rows = {row["reference"]: row for row in images.list_images(client)}
    assert all(ref.startswith(images.prefix()) for ref in rows)
    row = rows[images.tag_for("busybox")]
    assert (row["name"], row["tag"]) == ("busybox", "latest")
    assert row["id"].startswith("sha256:")
    assert row["size"] > 0
    assert row["created"]


def test_a_root_image_that_exists_is_kept_unless_rebuilt(client: DockerClient) -> None:
    images.build("busybox", client=client)
    assert images.build("busybox", client=client) == []
    assert images.build("busybox", client=client, rebuild=True) == [images.tag_for("busybox")]


def test_ensure_knows_sandbox_names_and_explains_the_rest(client: DockerClient) -> None:
    assert images.ensure("busybox", client) == images.tag_for("busybox")
    with pytest.raises(ExecutorError, match=r"no sandbox_images/nope.*ci-runner images build NAME"):
        images.ensure(images.tag_for("nope"), client)
    with pytest.raises(ExecutorError, match=r"no sandbox image named 'nope': known are busybox"):
        images.build("nope", client=client)


@pytest.mark.slow
def test_python_image_runs_python_and_makes_a_venv_in_the_worktree(
    client: DockerClient, tmp_path: Path,
) -> None:
    images.build("python", client=client)
    script = ("python3 -c 'import sys; print(sys.version_info[0])' && "
              "python3 -m venv .venv && .venv/bin/python -m pip --version >/dev/null && "
              "git init -q . && git status --short | head -1 && echo ok")
    chunks: list[str] = []
    executor = ContainerExecutor("python", labels={"ci-runner.step": "py"}, client=client)
    result = asyncio.run(executor.run(CommandSpec(argv=script, cwd=tmp_path, timeout_s=120),
                                      chunks.append))
    assert (result.exit_code, "".join(chunks).split()) == (0, ["3", "??", ".venv/", "ok"])
    assert (tmp_path / ".venv" / "bin" / "python").exists()


@pytest.mark.slow
def test_postgres_service_is_ready_on_localhost(client: DockerClient, tmp_path: Path) -> None:
    images.build("postgres", client=client)
    chunks: list[str] = []
    # The postgres image has psql; the step joins the service's network namespace.
    executor = ContainerExecutor("postgres", services={"db": "postgres"},
                                 labels={"ci-runner.step": "pg"}, client=client)
    script = "psql -h db -U postgres -tA -c 'select 40 + 2'"
    result = asyncio.run(executor.run(CommandSpec(argv=script, cwd=tmp_path, timeout_s=120),
                                      chunks.append))
    assert (result.exit_code, "".join(chunks)) == (0, "42\n")
