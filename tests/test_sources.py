"""What a source folder gives a build context: never version control, dotenv or credential files,
nor the toolkit's own folders, whatever fleet.toml's ignore list says."""

from __future__ import annotations

from pathlib import Path

from buildtool.model.sources import TOOLKIT_MARKER, read_tree


def test_hard_exclusions_hold_with_an_empty_ignore_list(tmp_path: Path) -> None:
    src = tmp_path / "agents" / "svc"
    for rel, text in {
        "app.py": "print('hi')\n",
        ".git/config": "[http]\n\textraheader = AUTHORIZATION: basic c2VjcmV0\n",
        ".env": "API_KEY=secret\n",
        ".env.local": "API_KEY=secret\n",
        "conf/.netrc": "machine x login y password z\n",
        "conf/settings.toml": "a = 1\n",
        ".pypirc": "[pypi]\npassword = x\n",
        "build/" + TOOLKIT_MARKER: "toolkit\n",
        "build/reports/sizes.json": "{}\n",
        ".envrc.sample": "kept: not a dotenv file\n",
        "keys/id_ed25519": "-----BEGIN OPENSSH PRIVATE KEY-----\n",
        ".envrc": "export API_KEY=secret\n",
    }.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    tree = read_tree(tmp_path, "agents/svc", ())
    assert sorted(rel for rel, _ in tree.files) == [".envrc.sample", "app.py", "conf/settings.toml"]


def test_a_copy_of_the_fleet_keeps_what_the_toolkit_wrote_into_it(tmp_path: Path) -> None:
    """The bench writes its agent into its fleet copy (a folder with the marker); copying that fleet
    again keeps it, while a build context never takes a toolkit folder."""
    from buildtool.adapters.files import copy_fleet, write_context
    from tests.conftest import REPO
    from tests.conftest import copy_fleet as copy_repo_fleet

    src, dest = tmp_path / "src", tmp_path / "dest"
    copy_repo_fleet(REPO, src)
    write_context(src / "agents" / "bench_agent", [("agent.py", b"print('bench')\n")])
    copy_fleet(src, dest)
    assert (dest / "agents" / "bench_agent" / "agent.py").read_bytes() == b"print('bench')\n"
    assert "bench_agent/agent.py" not in {rel for rel, _ in read_tree(src, "agents", ()).files}
