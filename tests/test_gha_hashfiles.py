"""hashFiles against digests recorded from GitHub's runner algorithm on the same tree
(tests/fixtures/gha_hashfiles/README.md), and the workspace boundary."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from ci_runner.workflows.expressions import ExpressionError, Functions, evaluate
from ci_runner.workflows.hashfiles import FOLLOW_OPTION, hash_files

FILES = {
    "a/b/x.txt": "ab\n",
    "a-c/x.txt": "ac\n",
    "a.txt": "a\n",
    ".hidden/x.txt": "h\n",
    "B/x.txt": "B\n",
    "node_modules/p/package-lock.json": "nm\n",
    "package-lock.json": "root\n",
    "sub/dir/package-lock.json": "sd\n",
    "sub/keep.lock": "k\n",
}

# patterns -> (digest from reference.mjs, the files it hashed in order)
RECORDED: list[tuple[list[str], str, list[str]]] = [
    (
        ["**/package-lock.json"],
        "df2bc4ac04724adc4f344d8083ad4dcb10f21f603a0237a9ce1fe80d3799223c",
        ["node_modules/p/package-lock.json", "package-lock.json", "sub/dir/package-lock.json"],
    ),
    (
        ["**/package-lock.json", "!**/node_modules/**"],
        "d1e6a3aff108a41da6370f4c3aa6ee4c5afd8ca5e1acd8730defcddef2201dcf",
        ["package-lock.json", "sub/dir/package-lock.json"],
    ),
    (
        ["**/*.txt"],
        "83b2f3e1b2ab386f6fb8ae9e9e449566cebf524e9d42f140f7b120d04216adc0",
        [".hidden/x.txt", "B/x.txt", "a/b/x.txt", "a-c/x.txt", "a.txt"],
    ),
    (
        ["sub"],
        "46a7b17d440f680570258249930a0a8c7de8a7ab1a246139217e2e92ccc0372a",
        ["sub/dir/package-lock.json", "sub/keep.lock"],
    ),
    (
        ["sub/**", "a/**"],
        "403bd9c5317377355dcecc9f95f5cef69b6c5443e8bf3c19e145b4ef049b3a9f",
        ["sub/dir/package-lock.json", "sub/keep.lock", "a/b/x.txt"],
    ),
    (
        ["*.txt", "link-to-file"],
        "68fe950e842939c752e49f0dc55638f82c233644d23be64a7f3cec6774925a16",
        ["a.txt", "link-to-file"],
    ),
    (["nothing-here"], "", []),
    (
        ["**"],
        "6de19330f5ba097832057b8064048dd9574bcafec3a5cf824b0942753cb67153",
        [
            ".hidden/x.txt",
            "B/x.txt",
            "a/b/x.txt",
            "a-c/x.txt",
            "a.txt",
            "link-to-file",
            "node_modules/p/package-lock.json",
            "package-lock.json",
            "sub/dir/package-lock.json",
            "sub/keep.lock",
        ],
    ),
    (
        ["sub/"],
        "46a7b17d440f680570258249930a0a8c7de8a7ab1a246139217e2e92ccc0372a",
        ["sub/dir/package-lock.json", "sub/keep.lock"],
    ),
    (
        ["a/?/x.txt", "[ab]-c/*"],
        "679bfe555a7974a033b050a287e9f50e6ab055cc9bf1813e5f9349630a6e9804",
        ["a/b/x.txt", "a-c/x.txt"],
    ),
    (
        ["**/x.txt\n# comment\n!B/**"],
        "0f5363027c4a87dd51acc784811d3cc5be6683c0ac4cd560050fe0ddea4a6fe2",
        [".hidden/x.txt", "a/b/x.txt", "a-c/x.txt"],
    ),
    (
        ["./a.txt"],
        "225f1bbbc4b1a3d97c622a492d91ea8d6858d7e1164bbbb5953f74311d6d222e",
        ["a.txt"],
    ),
    (
        ["!a.txt", "a.txt"],
        "225f1bbbc4b1a3d97c622a492d91ea8d6858d7e1164bbbb5953f74311d6d222e",
        ["a.txt"],
    ),
]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    for rel, text in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "empty").mkdir()
    (root / "link-to-file").symlink_to("a.txt")
    (root / "dir-link").symlink_to("sub")
    return root


def _expected(root: Path, files: list[str]) -> str:
    total = hashlib.sha256()
    for rel in files:
        total.update(hashlib.sha256((root / rel).read_bytes()).digest())
    return total.hexdigest() if files else ""


@pytest.mark.parametrize(
    ("patterns", "digest", "files"), RECORDED, ids=[repr(r[0]) for r in RECORDED]
)
def test_matches_github_runner(
    tree: Path, patterns: list[str], digest: str, files: list[str]
) -> None:
    # The recorded file order explains the digest; both must hold.
    assert _expected(tree, files) == digest
    assert hash_files(tree, patterns) == digest


# --follow-symbolic-links, recorded with followSymbolicLinks: true (FOLLOW=1)
RECORDED_FOLLOW: list[tuple[list[str], str, list[str]]] = [
    (
        ["**/package-lock.json"],
        "8b60273943ef31342a2b8e59c245cb0a420506d7350e7be0564900189cd9e18b",
        [
            "dir-link/dir/package-lock.json",
            "node_modules/p/package-lock.json",
            "package-lock.json",
            "sub/dir/package-lock.json",
        ],
    ),
    (
        ["dir-link/**"],
        "46a7b17d440f680570258249930a0a8c7de8a7ab1a246139217e2e92ccc0372a",
        ["dir-link/dir/package-lock.json", "dir-link/keep.lock"],
    ),
    (
        ["**"],
        "f1380154ab8f2d3a75f7ea36aa354e1294fc0cc90362cb9b0a7dd22a0c94ab1d",
        [
            ".hidden/x.txt",
            "B/x.txt",
            "a/b/x.txt",
            "a-c/x.txt",
            "a.txt",
            "dir-link/dir/package-lock.json",
            "dir-link/keep.lock",
            "link-to-file",
            "node_modules/p/package-lock.json",
            "package-lock.json",
            "sub/dir/package-lock.json",
            "sub/keep.lock",
        ],
    ),
]


@pytest.mark.parametrize(
    ("patterns", "digest", "files"), RECORDED_FOLLOW, ids=[repr(r[0]) for r in RECORDED_FOLLOW]
)
def test_follow_symbolic_links_matches_github_runner(
    tree: Path, patterns: list[str], digest: str, files: list[str]
) -> None:
    assert _expected(tree, files) == digest
    assert hash_files(tree, [FOLLOW_OPTION, *patterns]) == digest


def test_following_stops_at_cycles_and_the_root(tree: Path) -> None:
    (tree / "sub" / "loop").symlink_to("..")
    outside = tree.parent / "outside"
    outside.mkdir()
    (outside / "package-lock.json").write_text("o\n")
    (tree / "out-link").symlink_to(outside)
    assert hash_files(tree, [FOLLOW_OPTION, "**/package-lock.json"]) == RECORDED_FOLLOW[0][1]


def test_several_arguments_are_several_patterns(tree: Path) -> None:
    assert hash_files(tree, ["**/package-lock.json", "!**/node_modules/**"]) == hash_files(
        tree, ["**/package-lock.json\n!**/node_modules/**"]
    )


def test_content_change_changes_the_digest(tree: Path) -> None:
    before = hash_files(tree, ["**/package-lock.json"])
    (tree / "sub/dir/package-lock.json").write_text("changed\n")
    assert hash_files(tree, ["**/package-lock.json"]) not in ("", before)


def test_nothing_outside_the_root(tree: Path) -> None:
    outside = tree.parent / "secret.txt"
    outside.write_text("s\n")
    (tree / "escape.txt").symlink_to(outside)
    assert hash_files(tree, ["../secret.txt"]) == ""
    assert hash_files(tree, [str(outside)]) == ""
    assert hash_files(tree, ["escape.txt"]) == ""
    # an absolute pattern inside the root is fine
    assert hash_files(tree, [str(tree / "a.txt")]) == hash_files(tree, ["a.txt"]) != ""


def test_unreadable_names_and_broken_links_are_skipped(tree: Path) -> None:
    (tree / "broken").symlink_to("does-not-exist")
    assert hash_files(tree, ["broken"]) == ""
    assert hash_files(tree, ["**"]) == RECORDED[7][1]


def test_non_utf8_file_names(tree: Path) -> None:
    name = os.fsdecode(b"caf\xe9.lock")
    (tree / name).write_bytes(b"x")
    assert hash_files(tree, ["*.lock"]) == _expected(tree, [name])


def test_through_the_expression(tree: Path) -> None:
    functions = Functions(hash_files=lambda patterns: hash_files(tree, patterns))
    digest = evaluate("hashFiles('**/package-lock.json', '!**/node_modules/**')", {}, functions)
    assert digest == RECORDED[1][1]
    key = evaluate("format('deps-{0}', hashFiles('nothing'))", {}, functions)
    assert key == "deps-"
    with pytest.raises(ExpressionError, match="hashFiles is not available here"):
        evaluate("hashFiles('x')", {})


def test_an_unreadable_file_fails_the_expression(tree: Path) -> None:
    if os.geteuid() == 0:
        # root reads any file; a host function failing the same way stands in
        def failing(patterns: object) -> str:
            raise PermissionError(13, "Permission denied", str(tree / "a.txt"))

        functions = Functions(hash_files=failing)
    else:
        (tree / "a.txt").chmod(0)
        functions = Functions(hash_files=lambda patterns: hash_files(tree, patterns))
    with pytest.raises(ExpressionError, match=r"hashFiles\('a.txt'\) failed: .*Permission denied"):
        evaluate("hashFiles('a.txt')", {}, functions)
