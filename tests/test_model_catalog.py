"""Model names, the install manifest's checks, and the chat template renderer (no model weights loaded)."""

import pytest

from services.common.chat_template import ChatRole, ChatTemplateError, ChatTurn, render_chat
from services.common.model_catalog import (
    DEFAULT_MODEL,
    DUMMY_TINY_MODEL,
    SMOLLM2_135M_INSTRUCT,
    ModelSource,
    parse_model_spec,
)
from services.common.model_manifest import MANIFEST_NAME, ModelFilesError, verify_model_dir, write_manifest
from services.common.tokenizer import load_tokenizer
from services.engine.config import EngineConfig
from services.engine.model_presets import ARCHITECTURE_PRESETS

PRESETS = frozenset(ARCHITECTURE_PRESETS)


def test_names_resolve_to_their_sources(tmp_path):
    assert parse_model_spec(DEFAULT_MODEL).source is ModelSource.CATALOG
    assert parse_model_spec(DUMMY_TINY_MODEL).source is ModelSource.DUMMY_TINY
    llama = parse_model_spec("dummy:llama3-8b", PRESETS)
    assert (llama.source, llama.preset, llama.catalog) == (ModelSource.DUMMY_ARCHITECTURE, "llama3-8b", None)
    shaped = parse_model_spec("dummy:smollm2-135m-instruct", PRESETS)
    assert shaped.catalog is SMOLLM2_135M_INSTRUCT and shaped.name == "dummy:smollm2-135m-instruct"
    assert parse_model_spec(str(tmp_path)).source is ModelSource.LOCAL_DIRECTORY
    assert parse_model_spec(f"dummy:{tmp_path}", PRESETS).path == tmp_path


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "must not be empty"),
        ("default", "unknown model 'default'"),
        ("dummy:gpt-17", "after 'dummy:'"),
        ("/no/such/dir", "unknown model"),
    ],
)
def test_bad_names_say_what_is_valid(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_model_spec(spec, PRESETS)
    if spec:
        with pytest.raises(ValueError, match=message):
            EngineConfig(model=spec)


def _model_dir(tmp_path):
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "model.safetensors").write_bytes(b"\x00" * 64)
    (directory / "tokenizer.json").write_text('{"version": "1.0"}')
    write_manifest(directory, model="m", source={"package": "p"}, converted_with={"torch": "x"})
    return directory


def test_manifest_verifies_and_names_the_corrupt_file_and_the_fix(tmp_path):
    directory = _model_dir(tmp_path)
    manifest = verify_model_dir(directory, "run the installer")
    assert set(manifest["files"]) == {"model.safetensors", "tokenizer.json"}
    (directory / "model.safetensors").write_bytes(b"\x01" * 64)  # same size, other bytes
    with pytest.raises(ModelFilesError, match=r"model\.safetensors is corrupt.*fix: run the installer"):
        verify_model_dir(directory, "run the installer")
    verify_model_dir(directory, "fix", include=lambda name: not name.endswith(".safetensors"))  # tokenizer only
    (directory / "tokenizer.json").unlink()
    with pytest.raises(ModelFilesError, match=r"tokenizer\.json is missing"):
        verify_model_dir(directory, "fix", include=lambda name: name == "tokenizer.json")


def test_an_interrupted_install_has_no_manifest_and_is_reported(tmp_path):
    directory = _model_dir(tmp_path)
    (directory / MANIFEST_NAME).unlink()
    with pytest.raises(ModelFilesError, match=f"{MANIFEST_NAME} is missing"):
        verify_model_dir(directory, "fix")
    (directory / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ModelFilesError, match="unreadable"):
        verify_model_dir(directory, "fix")


def test_catalog_tokenizer_without_an_install_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("ALISE_CACHE_DIR", str(tmp_path))
    with pytest.raises(ModelFilesError, match="scripts/install.sh"):
        load_tokenizer(DEFAULT_MODEL)


def test_chat_template_renders_roles_and_raises_its_own_errors():
    template = (
        "{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
        "{{ raise_exception('system must come first') }}{% endif %}"
        "<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    turns = [ChatTurn(ChatRole.SYSTEM, "Be brief."), ChatTurn(ChatRole.USER, "Hi")]
    assert render_chat(template, turns, eos_token="</s>") == "<system>Be brief.</s><user>Hi</s><assistant>"
    with pytest.raises(ChatTemplateError, match="system must come first"):
        render_chat(template, list(reversed(turns)))
    with pytest.raises(ChatTemplateError):  # the sandbox refuses attribute access to internals
        render_chat("{{ messages.__class__.__mro__ }}", turns)
