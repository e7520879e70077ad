"""The asset cache: fetch → manifest → require / verify, registry clients' errors, and ``ldm assets``."""

import io
import json
import sys
import tarfile

import pytest

from ldmkit import assets
from ldmkit.assets import clients, registry
from ldmkit.assets.clients import AssetFetchError, FetchContext, extract_members, run_tool
from ldmkit.assets.store import MANIFEST
from ldmkit.cli.main import main
from ldmkit.errors import AssetMissingError, CheckpointError, LdmkitError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty $LDMKIT_HOME with one extra asset ``toy`` whose recipe writes two small files."""
    home = tmp_path / "home"
    monkeypatch.setenv("LDMKIT_HOME", str(home))
    calls = []

    def build(ctx: FetchContext) -> None:
        calls.append(ctx.name)
        (ctx.out / "images").mkdir()
        (ctx.out / "images" / "a.png").write_bytes(b"png-bytes")
        (ctx.out / "weights.bin").write_bytes(bytes(range(256)) * 4)
        ctx.sources.append({"registry": "test", "command": "none", "file": "-", "bytes": 1024, "sha256": "0"})

    toy = registry.Asset("toy", "a toy asset", 0.001, "MIT", "nothing", build)
    monkeypatch.setitem(registry.ASSETS, "toy", toy)
    return home, calls


def test_home_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LDMKIT_HOME", str(tmp_path / "x"))
    assert assets.home() == tmp_path / "x"
    monkeypatch.delenv("LDMKIT_HOME")
    assert assets.home().parts[-2:] == (".cache", "ldmkit")


def test_registry_lists_the_contracted_assets():
    assert {"lpips", "efficientnet-lite0", "minilm", "fashion-mnist", "fluent-emoji-3d", "twemoji",
            "noto-emoji"} <= set(assets.ASSETS)
    for asset in assets.ASSETS.values():
        assert asset.description and asset.license and asset.download_mb > 0 and asset.source


def test_require_missing_names_the_fetch_command(cache):
    with pytest.raises(AssetMissingError, match="run: ldm assets fetch lpips$"):
        assets.require("lpips")
    with pytest.raises(LdmkitError, match="did you mean 'lpips'"):
        assets.require("lpip")


def test_fetch_installs_with_manifest_and_skips_when_complete(cache):
    home, calls = cache
    lines = []
    paths = assets.fetch(["toy"], log=lines.append)
    root = home / "toy"
    assert paths == {"toy": root} and assets.require("toy") == root
    manifest = json.loads((root / MANIFEST).read_text())
    assert set(manifest["files"]) == {"images/a.png", "weights.bin"}
    assert manifest["files"]["weights.bin"]["bytes"] == 1024
    assert manifest["source"]["downloads"][0]["registry"] == "test"
    assert [p.name for p in home.iterdir() if not p.name.endswith(".lock")] == ["toy"]  # no staging left
    assert any("done" in line and str(root) in line for line in lines)

    assets.fetch(["toy"], log=lines.append)
    assert calls == ["toy"]  # complete: not fetched again
    assets.fetch(["toy"], force=True, log=lines.append)
    assert calls == ["toy", "toy"]


def test_failed_fetch_leaves_nothing_that_looks_fetched(cache, monkeypatch):
    home, _ = cache

    def broken(ctx):
        (ctx.out / "half.bin").write_bytes(b"x")
        raise AssetFetchError("fetching toy: `npm pack x` failed (exit 1): npm error 404")

    monkeypatch.setitem(registry.ASSETS, "toy", registry.Asset("toy", "toy", 1, "MIT", "-", broken))
    with pytest.raises(AssetFetchError, match="404"):
        assets.fetch(["toy"], log=lambda _: None)
    assert not (home / "toy").exists()
    assert [p.name for p in home.iterdir() if not p.name.endswith(".lock")] == []
    with pytest.raises(AssetMissingError):
        assets.require("toy")


def test_verify_detects_a_tampered_file_and_require_a_missing_one(cache):
    home, _ = cache
    assets.fetch(["toy"], log=lambda _: None)
    assert assets.verify("toy").ok
    weights = home / "toy" / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[100] ^= 1  # same size: only the hash can tell
    weights.write_bytes(bytes(data))
    result = assets.verify("toy")
    assert not result.ok and result.bad == ["weights.bin (SHA-256 differs)"]
    assert assets.require("toy")  # require checks presence and size only
    (home / "toy" / "images" / "a.png").unlink()
    with pytest.raises(AssetMissingError, match="incomplete.*--force"):
        assets.require("toy")


def test_manifest_is_what_makes_an_asset_fetched(cache):
    home, _ = cache
    (home / "toy").mkdir(parents=True)
    (home / "toy" / "weights.bin").write_bytes(b"partial")
    assert not assets.is_fetched("toy")
    with pytest.raises(AssetMissingError):
        assets.require("toy")
    (home / "toy" / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match="--force"):
        assets.require("toy")


def test_run_tool_failure_is_one_line(tmp_path):
    ctx = FetchContext("toy", tmp_path, tmp_path, lambda _: None)
    script = "import sys; print('progress'); sys.stderr.write('Collecting x\\nERROR: No matching distribution\\n'); sys.exit(3)"
    with pytest.raises(AssetFetchError) as info:
        run_tool([sys.executable, "-c", script], ctx)
    message = str(info.value)
    assert "\n" not in message and "exit 3" in message and message.endswith("ERROR: No matching distribution")
    with pytest.raises(AssetFetchError, match="needs the `no-such-client-xyz` command"):
        run_tool(["no-such-client-xyz"], ctx)


def test_extract_members_copies_selected_files_only(tmp_path):
    archive = tmp_path / "pkg.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        for name, data in [("package/assets/1f600.webp", b"a"), ("package/README.md", b"r"),
                           ("package/assets/sub/x.webp", b"s"), ("../../escape.webp", b"e")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    written = extract_members(archive, lambda n: f"images/{n.rsplit('/', 1)[1]}"
                              if n.startswith("package/assets/") and n.count("/") == 2 else None, out)
    assert [p.relative_to(out).as_posix() for p in written] == ["images/1f600.webp"]
    assert clients.read_member(archive, "package/README.md") == b"r"
    with pytest.raises(AssetFetchError, match="outside"):
        extract_members(archive, lambda n: n if n.startswith("..") else None, out)
    assert not (tmp_path.parent / "escape.webp").exists()


def test_cli_list_path_verify(cache, capsys):
    home, _ = cache
    assert main(["assets", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("lpips", "efficientnet-lite0", "minilm", "fashion-mnist", "fluent-emoji-3d", "twemoji", "toy"):
        assert name in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("toy ")] == ["no"]

    assert main(["assets", "path", "toy"]) == 2
    assert "run: ldm assets fetch toy" in capsys.readouterr().err

    assert main(["assets", "fetch", "toy"]) == 0
    capsys.readouterr()
    assert main(["assets", "path", "toy"]) == 0
    assert capsys.readouterr().out.strip() == str(home / "toy")
    assert main(["assets", "list"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("toy ")]
    assert rows and rows[0][1] == "yes"

    assert main(["assets", "verify", "toy"]) == 0
    assert "toy: ok" in capsys.readouterr().out
    (home / "toy" / "weights.bin").write_bytes(b"changed!" * 128)
    assert main(["assets", "verify", "toy"]) == 2
    err = capsys.readouterr().err
    assert "weights.bin" in err and "ldm assets fetch toy --force" in err
