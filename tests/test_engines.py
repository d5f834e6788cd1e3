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


def test_tls_keeps_the_engine_and_reaches_the_rust_writer(tmp_path):
    require_rust()
    ca = tmp_path / "ca.pem"
    ca.write_text("read by the writer, not by the load\n")
    tls = settings(
        PUI_CASSANDRA_TLS="true",
        PUI_CASSANDRA_TLS_CHECK_HOSTNAME="false",
        PUI_CASSANDRA_TLS_CA_FILE=str(ca),
    )
    assert engines.choose(tls) == "rust"
    assert engines.choose(settings(PUI_CASSANDRA_TLS="true", PUI_ENGINE="python")) == "python"
    options = engines.writer_options(tls)
    assert options["tls"] is True and options["tls_check_hostname"] is False
    assert options["tls_ca_file"] == str(ca)
    assert engines.writer_options(settings())["tls"] is False


def test_a_tls_file_the_rust_writer_cannot_use_names_its_setting(tmp_path):
    """The writer reads the files before it connects: no server is needed to refuse them."""
    require_rust()
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    bad_ca = settings(PUI_ENGINE="rust", PUI_CASSANDRA_TLS="true",
                      PUI_CASSANDRA_TLS_CA_FILE=str(garbage))  # fmt: skip
    with pytest.raises(config.ConfigError, match="PUI_CASSANDRA_TLS_CA_FILE") as info:
        engines.open_engine(bad_ca)
    assert str(garbage) in str(info.value) and "\n" not in str(info.value)
    bad_key = settings(PUI_ENGINE="rust", PUI_CASSANDRA_TLS="true",
                       PUI_CASSANDRA_TLS_CERT_FILE=str(garbage),
                       PUI_CASSANDRA_TLS_KEY_FILE=str(garbage))  # fmt: skip
    with pytest.raises(config.ConfigError, match="PUI_CASSANDRA_TLS_CERT_FILE"):
        engines.open_engine(bad_key)


def test_rust_writer_binds_the_columns_of_the_python_engine():
    require_rust()
    from dataflow.flatten import native

    assert tuple(native().writer_columns()) == COLUMNS
