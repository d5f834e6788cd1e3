"""Engine choice, without servers: what ``PUI_ENGINE`` and the TLS settings select."""

from __future__ import annotations

import pytest

from dataflow import config, engines
from dataflow.flatten import COLUMNS
from tests.conftest import require_rust


def settings(**env: str) -> config.Settings:
    return config.load(env)


def test_auto_is_rust_when_built():
    require_rust()
    assert engines.choose(settings()) == "rust"
    assert engines.choose(settings(PUI_ENGINE="python")) == "python"


def test_old_setting_name_still_chooses():
    assert engines.choose(settings(PUI_FLATTENER="python")) == "python"
    # The new name wins over the old one.
    assert engines.choose(settings(PUI_FLATTENER="rust", PUI_ENGINE="python")) == "python"


def test_tls_selects_the_python_engine_or_refuses_an_explicit_rust():
    require_rust()
    assert engines.choose(settings(PUI_CASSANDRA_TLS="true")) == "python"
    with pytest.raises(config.ConfigError, match="PUI_ENGINE=rust"):
        engines.choose(settings(PUI_CASSANDRA_TLS="true", PUI_ENGINE="rust"))


def test_rust_writer_binds_the_columns_of_the_python_engine():
    require_rust()
    from dataflow.flatten import native

    assert tuple(native().writer_columns()) == COLUMNS
