"""The test suite never replaces or removes a user's own images (issue 12): it builds
its sandbox images under ``CI_RUNNER_IMAGE_PREFIX`` (``conftest.py`` sets
``ci-runner-test/``), so a user's ``ci-runner/busybox``, present before, keeps its
image id through what the image tests do: builds, a rebuild, ``ci-runner images
build --rebuild`` and a real run of heavy steps, one naming the image
``ci-runner/busybox`` itself."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from ci_runner import images
from tests.conftest import TEST_IMAGE_PREFIX
from tests.test_container import require_engine

if TYPE_CHECKING:
    from docker import DockerClient

USERS = f"{images.CANONICAL_PREFIX}busybox:latest"
PIPELINE = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("short", ["sh", "-c", "echo short name"], image="busybox")
        await step.run("spelled", ["sh", "-c", "echo spelled out"], image="ci-runner/busybox")
"""


@pytest.fixture(scope="module")
def client() -> DockerClient:
    return require_engine()


def _a_users_image() -> bytes:
    """A one-file root file system: what a user might have tagged ci-runner/busybox."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        content = b"made by the user, not by ci-runner's tests\n"
        info = tarfile.TarInfo("users-own-image")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return data.getvalue()


@pytest.fixture
def users_busybox(client: DockerClient) -> Iterator[str]:
    """The id of the user's ci-runner/busybox:latest: the one present, or one made here
    (and removed afterwards)."""
    from docker.errors import DockerException, ImageNotFound

    made = False
    try:
        image_id = str(client.images.get(USERS).id)
    except ImageNotFound:
        repository, _, tag = USERS.rpartition(":")
        client.api.import_image_from_data(_a_users_image(), repository=repository, tag=tag)
        image_id = str(client.images.get(USERS).id)
        made = True
    yield image_id
    if made:
        try:
            if client.images.get(USERS).id == image_id:
                client.images.remove(USERS)
        except DockerException:
            pass


def test_the_suite_names_its_images_under_a_prefix_of_its_own():
    assert os.environ[images.PREFIX_ENV] == TEST_IMAGE_PREFIX
    assert images.prefix() == TEST_IMAGE_PREFIX != images.CANONICAL_PREFIX
    assert images.tag_for("busybox") == f"{TEST_IMAGE_PREFIX}busybox:latest"


def test_a_users_own_image_survives_the_image_tests(
        client: DockerClient, users_busybox: str, cli, repo_with) -> None:
    ours = images.tag_for("busybox")
    assert images.build("busybox", client=client, rebuild=True) == [ours]
    assert images.build("busybox", client=client) == []
    assert images.ensure("busybox", client) == ours
    assert images.ensure(USERS, client) == ours
    rebuilt = cli("images", "build", "busybox", "--rebuild")
    assert rebuilt.code == 0, rebuilt.err
    assert f"built {ours}" in rebuilt.out
    listed = cli("images", "list", "--json")
    assert listed.code == 0, listed.err
    assert USERS not in listed.out and ours in listed.out
    ran = cli("run", "--json", cwd=repo_with(PIPELINE))
    assert ran.code == 0, ran.err
    steps = {s["name"]: s for s in ran.json()["steps"]}
    assert {s["sandbox"] for s in steps.values()} == {"docker"}
    assert client.images.get(USERS).id == users_busybox
    assert USERS in client.images.get(users_busybox).tags
