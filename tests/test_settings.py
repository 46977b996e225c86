"""Settings: IMAGEGATE_* env over a TOML file over defaults; the generated URL-signing secret."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from imagegate.settings import Settings
from imagegate.storage import URLSigner

TOML = """
port = 9100
default_model = "tiny-sd"
url_ttl_seconds = 120
public_url = "https://img.example.com"
allow_downloads = true

[models.tiny-sd.capabilities]
max_n = 2

[models."flux-1.1-pro"]
enabled = true

[models.my-sd]
backend = "local"
local = { source = "/models/my-sd" }
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No IMAGEGATE_* from the outer environment, and whatever a test (or `Settings.load`) sets
    is undone afterwards; relative paths land in tmp_path."""
    for key in list(os.environ):
        if key.startswith("IMAGEGATE_"):
            monkeypatch.delenv(key)
    # Register IMAGEGATE_CONFIG with monkeypatch so it is removed again after the test even
    # when Settings.load() sets it behind monkeypatch's back.
    monkeypatch.setenv("IMAGEGATE_CONFIG", "")
    monkeypatch.delenv("IMAGEGATE_CONFIG")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "imagegate.toml"
    path.write_text(TOML)
    return path


def test_defaults() -> None:
    s = Settings.load()
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert s.data_dir == Path("imagegate-data")
    assert s.resolved_models_dir == Path("imagegate-data") / "models"
    assert s.images_dir == Path("imagegate-data") / "images"
    assert s.storage.url_ttl_seconds == 3600
    assert s.storage.url_secret is None
    assert s.api.default_model == "sd-turbo"
    assert s.engine.allow_downloads is False
    assert s.engine.device == "auto"
    assert s.models == {}


def test_env_vars_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMAGEGATE_PORT", "9001")
    monkeypatch.setenv("IMAGEGATE_HOST", "0.0.0.0")
    monkeypatch.setenv("IMAGEGATE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IMAGEGATE_MODELS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("IMAGEGATE_DEFAULT_MODEL", "tiny-sd")
    monkeypatch.setenv("IMAGEGATE_URL_TTL_SECONDS", "60")
    monkeypatch.setenv("IMAGEGATE_ALLOW_DOWNLOADS", "true")
    monkeypatch.setenv("IMAGEGATE_DEVICE", "cpu")
    monkeypatch.setenv("IMAGEGATE_MODELS", '{"tiny-sd": {"enabled": false}}')
    s = Settings.load()
    assert s.port == 9001
    assert s.host == "0.0.0.0"
    assert s.data_dir == tmp_path / "data"
    assert s.resolved_models_dir == tmp_path / "weights"
    assert s.images_dir == tmp_path / "data" / "images"
    assert s.api.default_model == "tiny-sd"
    assert s.storage.url_ttl_seconds == 60
    assert s.engine.allow_downloads is True
    assert s.engine.device == "cpu"
    assert s.models == {"tiny-sd": {"enabled": False}}


def test_env_var_names_are_case_insensitive_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "1234")  # no prefix: not ours
    assert Settings.load().port == 8000


@pytest.mark.parametrize("key, value", [
    ("IMAGEGATE_PORT", "eighty"),
    ("IMAGEGATE_DEVICE", "tpu"),
    ("IMAGEGATE_URL_TTL_SECONDS", "0"),
    ("IMAGEGATE_MAX_REQUEST_BYTES", "10"),
    ("IMAGEGATE_SWEEP_INTERVAL_SECONDS", "0"),
])
def test_invalid_env_values_are_errors(monkeypatch: pytest.MonkeyPatch, key: str,
                                       value: str) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        Settings.load()


def test_toml_file_is_read(config_file: Path) -> None:
    s = Settings.load(config_file)
    assert s.port == 9100
    assert s.api.default_model == "tiny-sd"
    assert s.storage.url_ttl_seconds == 120
    assert s.public_url == "https://img.example.com"
    assert s.engine.allow_downloads is True
    assert s.host == "127.0.0.1"  # not in the file: default


def test_toml_file_path_as_string(config_file: Path) -> None:
    assert Settings.load(str(config_file)).port == 9100


def test_models_tables_land_in_settings_models(config_file: Path) -> None:
    models = Settings.load(config_file).models
    assert models == {
        "tiny-sd": {"capabilities": {"max_n": 2}},
        "flux-1.1-pro": {"enabled": True},
        "my-sd": {"backend": "local", "local": {"source": "/models/my-sd"}},
    }


def test_models_from_toml_build_a_catalog(config_file: Path) -> None:
    from imagegate.catalog import Catalog

    catalog = Catalog.from_config(Settings.load(config_file).models)
    assert catalog.get("tiny-sd").capabilities.max_n == 2
    assert catalog.get("flux-1.1-pro").enabled
    assert catalog.get("my-sd").local.source == "/models/my-sd"


def test_models_env_json_merges_with_toml(monkeypatch: pytest.MonkeyPatch,
                                          config_file: Path) -> None:
    """docs/configuration.md: `models` tables are merged key by key across levels."""
    monkeypatch.setenv("IMAGEGATE_MODELS", '{"tiny-sd": {"capabilities": {"max_prompt_chars": 10},'
                                           ' "enabled": false}, "sd-turbo": {"enabled": false}}')
    models = Settings.load(config_file).models
    assert models["tiny-sd"] == {"capabilities": {"max_n": 2, "max_prompt_chars": 10},
                                 "enabled": False}
    assert models["sd-turbo"] == {"enabled": False}
    assert models["flux-1.1-pro"] == {"enabled": True}


def test_env_overrides_toml(monkeypatch: pytest.MonkeyPatch, config_file: Path) -> None:
    monkeypatch.setenv("IMAGEGATE_PORT", "9200")
    monkeypatch.setenv("IMAGEGATE_ALLOW_DOWNLOADS", "false")
    s = Settings.load(config_file)
    assert s.port == 9200
    assert s.engine.allow_downloads is False
    assert s.storage.url_ttl_seconds == 120  # not in env: TOML still applies


def test_explicit_overrides_win(monkeypatch: pytest.MonkeyPatch, config_file: Path) -> None:
    monkeypatch.setenv("IMAGEGATE_PORT", "9200")
    s = Settings.load(config_file, port=9300, host="::1")
    assert (s.port, s.host) == (9300, "::1")


def test_config_from_env_var(monkeypatch: pytest.MonkeyPatch, config_file: Path) -> None:
    monkeypatch.setenv("IMAGEGATE_CONFIG", str(config_file))
    assert Settings.load().port == 9100


def test_nonexistent_config_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Settings.load(tmp_path / "nope.toml")
    with pytest.raises(FileNotFoundError):
        Settings.load(tmp_path)  # a directory is not a config file


def test_nonexistent_config_from_env_var(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    """A typo in $IMAGEGATE_CONFIG must not silently start a server on the defaults."""
    monkeypatch.setenv("IMAGEGATE_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(FileNotFoundError):
        Settings.load()


def test_load_does_not_leak_the_config_file(config_file: Path) -> None:
    """Loading one file must not make later, unrelated loads read it (no global state)."""
    assert Settings.load(config_file).port == 9100
    assert Settings.load().port == 8000
    assert "IMAGEGATE_CONFIG" not in os.environ


def test_invalid_toml_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("port = = 3\n")
    with pytest.raises(Exception) as info:
        Settings.load(bad)
    assert not isinstance(info.value, FileNotFoundError)


# --- the URL-signing secret ------------------------------------------------------------------

def test_url_secret_generated_once_and_stable(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Settings.load(data_dir=data).signing_secret()
    assert len(first) >= 32
    path = data / "url-secret"
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Settings.load(data_dir=data).signing_secret() == first
    assert Settings.load(data_dir=data).signing_secret() == first
    assert [p.name for p in data.iterdir()] == ["url-secret"]  # no temp file left behind
    URLSigner(first, 60)  # long enough to sign with


def test_url_secret_differs_per_data_dir(tmp_path: Path) -> None:
    a = Settings.load(data_dir=tmp_path / "a").signing_secret()
    b = Settings.load(data_dir=tmp_path / "b").signing_secret()
    assert a != b


def test_url_secret_file_mode_ignores_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        Settings.load(data_dir=tmp_path / "d").signing_secret()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "d" / "url-secret").stat().st_mode) == 0o600


def test_existing_secret_file_is_used(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "url-secret").write_text("an-operator-provided-secret-value\n")
    assert Settings.load(data_dir=data).signing_secret() == b"an-operator-provided-secret-value"


def test_configured_url_secret_used_verbatim(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    secret = "  my shared replica secret, 0123456789 "
    assert Settings.load(data_dir=data, url_secret=secret).signing_secret() == secret.encode()
    assert not (data / "url-secret").exists()  # nothing generated, nothing written
    monkeypatch.setenv("IMAGEGATE_URL_SECRET", "from-the-environment-0123456789")
    assert Settings.load(data_dir=data).signing_secret() == b"from-the-environment-0123456789"
    assert not data.exists()


def test_configured_secret_wins_over_generated_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generated = Settings.load(data_dir=data).signing_secret()
    configured = Settings.load(data_dir=data, url_secret="x" * 20).signing_secret()
    assert configured == b"x" * 20 != generated


# --- groups: nested tables, flat names ------------------------------------------------------

NESTED_TOML = """
[fetch]
max_bytes = 4096
allowed_hosts = ["cdn.example.com"]

[upstream]
max_attempts = 5

[engine]
device = "cpu"

[engine.speed]
dtype = "float16"

[accounts]
currency = "EUR"
"""


def test_nested_tables_set_the_groups(tmp_path: Path) -> None:
    path = tmp_path / "nested.toml"
    path.write_text(NESTED_TOML)
    s = Settings.load(path)
    assert s.fetch.max_bytes == 4096
    assert s.fetch.allowed_hosts == frozenset({"cdn.example.com"})
    assert s.fetch.timeout_seconds == 15.0  # not in the table: default
    assert s.upstream.max_attempts == 5
    assert (s.engine.device, s.engine.speed.dtype) == ("cpu", "float16")
    assert s.accounts.currency == "EUR"


def test_flat_toml_keys_still_set_the_groups(tmp_path: Path) -> None:
    path = tmp_path / "flat.toml"
    path.write_text('fetch_max_bytes = 4096\nupstream_max_attempts = 5\nengine_dtype = "float16"\n'
                    'currency = "EUR"\ndevice = "cpu"\n')
    s = Settings.load(path)
    assert (s.fetch.max_bytes, s.upstream.max_attempts, s.engine.speed.dtype) == (
        4096, 5, "float16")
    assert (s.accounts.currency, s.engine.device) == ("EUR", "cpu")


def test_flat_env_names_override_nested_toml_field_by_field(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "nested.toml"
    path.write_text(NESTED_TOML)
    monkeypatch.setenv("IMAGEGATE_FETCH_MAX_BYTES", "8192")
    monkeypatch.setenv("imagegate_engine_dtype", "bfloat16")  # case-insensitive, as the rest
    monkeypatch.setenv("IMAGEGATE_FETCH_ALLOWED_HOSTS", "a.example.com, b.example.com")
    s = Settings.load(path)
    assert s.fetch.max_bytes == 8192
    assert s.fetch.allowed_hosts == frozenset({"a.example.com", "b.example.com"})
    assert s.engine.speed.dtype == "bfloat16"
    assert s.engine.device == "cpu"  # the file's, the environment says nothing of it
    assert s.upstream.max_attempts == 5


def test_explicit_overrides_take_flat_or_nested_names() -> None:
    from imagegate.settings import FetchPolicy

    assert Settings.load(fetch_max_bytes=2048).fetch.max_bytes == 2048
    given = Settings.load(fetch=FetchPolicy(max_bytes=2048), fetch_allow_private=True)
    assert (given.fetch.max_bytes, given.fetch.allow_private) == (2048, True)


def test_every_flat_name_reaches_its_field() -> None:
    from imagegate.settings import FLAT_NAMES

    s = Settings.load()
    for flat, path in FLAT_NAMES.items():
        node: object = s
        for part in path:
            node = getattr(node, part)  # AttributeError: the table names a field that is gone


def test_an_unknown_field_in_a_group_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text("[fetch]\nmax_byte = 4096\n")
    with pytest.raises(ValidationError):
        Settings.load(path)


def test_errors_name_the_flat_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from imagegate.settings import flat_name

    monkeypatch.setenv("IMAGEGATE_FETCH_MAX_BYTES", "12")
    with pytest.raises(ValidationError) as info:
        Settings.load()
    assert flat_name(info.value.errors()[0]["loc"]) == "fetch_max_bytes"
    assert flat_name(("engine", "speed", "dtype")) == "engine_dtype"
    assert flat_name(("port",)) == "port"
