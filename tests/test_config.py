"""Settings: defaults derived from PUI_ENV, env over HOCON, errors that name the setting."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import pytest

from dataflow import config, settings_docs
from dataflow import settings_table as st
from dataflow.config import ConfigError
from dataflow.exhaust import settings as exhaust_settings


def test_defaults_follow_the_environment_name():
    s = config.load({"PUI_ENV": "staging"})
    assert s.input_topic == "staging.programuser.info"
    assert s.failed_topic == "staging.programuser.info.failed"
    assert s.group_id == "staging-programuser-group"
    assert s.cassandra_keyspace == "sunbird_programs"
    assert s.cassandra_table == "program_enrollment"
    assert s.cassandra_consistency == "LOCAL_QUORUM"
    assert s.max_message_bytes == 1024 * 1024


def test_hocon_file_with_sunbird_keys_and_env_wins(tmp_path):
    conf = tmp_path / "program-user-info.conf"
    conf.write_text(
        """
        kafka {
          broker-servers = "10.0.0.5:9092"
          input.topic = "dev.programuser.info"
          groupId = "dev-programuser-group"
        }
        ml-cassandra {
          host = "10.0.0.7"
          port = 9142
          keyspace = "sunbird_programs_dev"
          table = "program_enrollment"
        }
        """
    )
    s = config.load({"PUI_CONFIG": str(conf), "PUI_CASSANDRA_PORT": "9042"})
    assert s.kafka_brokers == "10.0.0.5:9092"
    assert s.input_topic == "dev.programuser.info"
    assert s.group_id == "dev-programuser-group"
    assert s.cassandra_hosts == ("10.0.0.7",)
    assert s.cassandra_keyspace == "sunbird_programs_dev"
    assert s.cassandra_port == 9042  # the environment wins over the file


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"PUI_CASSANDRA_PORT": "ninety"}, "PUI_CASSANDRA_PORT"),
        ({"PUI_CASSANDRA_PORT": "70000"}, "PUI_CASSANDRA_PORT"),
        ({"PUI_CASSANDRA_KEYSPACE": "ks; DROP TABLE x"}, "PUI_CASSANDRA_KEYSPACE"),
        ({"PUI_INPUT_TOPIC": "bad topic"}, "PUI_INPUT_TOPIC"),
        ({"PUI_CASSANDRA_CONSISTENCY": "MOST"}, "PUI_CASSANDRA_CONSISTENCY"),
        ({"PUI_FLATTENER": "java"}, "PUI_FLATTENER"),
        ({"PUI_STOP_AT_END": "maybe"}, "PUI_STOP_AT_END"),
        ({"PUI_MAX_MESSAGE_BYTES": "0"}, "PUI_MAX_MESSAGE_BYTES"),
        ({"PUI_CASSANDRA_USERNAME": "u"}, "PUI_CASSANDRA_PASSWORD"),
        ({"PUI_CONFIG": "/nonexistent/file.conf"}, "PUI_CONFIG"),
        ({"PUI_CASSANDRA_REPLICATION": "not a map"}, "PUI_CASSANDRA_REPLICATION"),
        ({"PUI_CASSANDRA_REPLICATION": "{'class': 'Simple'}"}, "PUI_CASSANDRA_REPLICATION"),
        (
            {"PUI_CASSANDRA_REPLICATION": "{'class': 'SimpleStrategy', 'replication_factor': '0'}"},
            "PUI_CASSANDRA_REPLICATION",
        ),
        (
            {"PUI_CASSANDRA_REPLICATION": "{'class': 'SimpleStrategy'} AND durable_writes = false"},
            "PUI_CASSANDRA_REPLICATION",
        ),
        (
            {"PUI_CASSANDRA_REPLICATION": "{'class': 'NetworkTopologyStrategy', 'dc1': 'x'}"},
            "PUI_CASSANDRA_REPLICATION",
        ),
        ({"PUI_CASSANDRA_REPLICATION": "{'class': 'NetworkTopologyStrategy'}"}, "REPLICATION"),
        ({"PUI_STARTUP_TIMEOUT": "0"}, "PUI_STARTUP_TIMEOUT"),
    ],
)
def test_bad_values_fail_naming_the_setting(environ, named):
    with pytest.raises(config.ConfigError) as info:
        config.load(environ)
    assert named in str(info.value)


def test_bad_hocon_value_names_the_file_key(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text('ml-cassandra { port = "not-a-port" }')
    with pytest.raises(config.ConfigError) as info:
        config.load({"PUI_CONFIG": str(conf)})
    assert "ml-cassandra.port" in str(info.value)


def test_librdkafka_passthrough_and_secrets_masked():
    s = config.load(
        {
            "PUI_KAFKA_CONFIG_SECURITY_PROTOCOL": "SASL_SSL",
            "PUI_KAFKA_CONFIG_SASL_PASSWORD": "hunter2",
            "PUI_CASSANDRA_USERNAME": "cassandra",
            "PUI_CASSANDRA_PASSWORD": "s3cret-pw",
        }
    )
    assert s.kafka_extra == {"security.protocol": "SASL_SSL", "sasl.password": "hunter2"}
    text = s.describe() + repr(s)
    assert "hunter2" not in text
    assert "s3cret-pw" not in text
    assert "security.protocol" in text


def test_every_variable_read_is_declared():
    """ENV_VARS is what the deploy manifests are checked against: it must list what load() reads."""
    import inspect

    source = inspect.getsource(config)
    read = set(re.findall(r'"(PUI_[A-Z_]+)"', source)) - {config.KAFKA_CONFIG_PREFIX}
    assert read <= set(config.ENV_VARS), read - set(config.ENV_VARS)


@pytest.mark.parametrize(
    "replication",
    [
        "{'class': 'SimpleStrategy', 'replication_factor': '1'}",
        "{'class':'SimpleStrategy','replication_factor':3}",
        "{'class': 'NetworkTopologyStrategy', 'dc-east': '3', 'dc_west': 2}",
        "{'class': 'org.apache.cassandra.locator.NetworkTopologyStrategy', 'dc1': '3'}",
    ],
)
def test_replication_maps_cassandra_accepts_pass(replication):
    s = config.load({"PUI_CASSANDRA_REPLICATION": f"  {replication} "})
    assert s.cassandra_replication == replication


# --- the table of settings: every entry is checked the same way -----------------------------

STREAMING = st.specs(config.Settings)
EXHAUST = st.specs(exhaust_settings.ExhaustSettings)
ALL_SPECS = [*STREAMING, *EXHAUST]


def _ids(specs):
    return [spec.var for _, spec in specs]


def test_the_class_defaults_are_what_an_empty_environment_loads():
    """One default per setting: the dataclass's is the table's, derived names included."""
    assert config.Settings() == config.load({})
    assert config.Settings(env="qa").input_topic == config.load({"PUI_ENV": "qa"}).input_topic


@pytest.mark.parametrize(("attr", "spec"), ALL_SPECS, ids=_ids(ALL_SPECS))
def test_every_entry_is_complete_and_its_default_parses(attr, spec):
    assert re.fullmatch(r"PUI_[A-Z0-9_]+\*?", spec.var), spec.var
    assert spec.help.strip() and "\n" not in spec.help
    if spec.prefix is not None:
        return
    cls = config.Settings if (attr, spec) in STREAMING else exhaust_settings.ExhaustSettings
    default = {f.name: f for f in dataclasses.fields(cls)}[attr].default
    if spec.derived:
        assert "{" in spec.default and default == ""  # filled in from the settings before it
    else:
        assert spec.parse(spec.var, spec.default) == default


def test_variable_names_are_unique_across_both_jobs():
    names = [*config.ENV_VARS, *exhaust_settings.ENV_VARS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    "name", [*config.ENV_VARS[1:], *st.variables(exhaust_settings.ExhaustSettings)]
)
def test_an_empty_variable_means_the_default(name):
    """As a ConfigMap that lists every setting has it; before, PUI_BATCH_SIZE="" was refused."""
    assert config.load({name: ""}) == config.load({})
    assert exhaust_settings.load({name: ""}) == exhaust_settings.load({})


# Parsers that take any text (the servers' names are checked by the clients that connect).
_ANY_TEXT = {"text", "optional", "_path", "_brokers", "_hosts"}
REFUSING = [
    name
    for _, spec in ALL_SPECS
    if spec.parse is not None and getattr(spec.parse, "__name__", "") not in _ANY_TEXT
    for name in (spec.var, *spec.aliases)
]


@pytest.mark.parametrize("name", REFUSING)
@pytest.mark.parametrize("raw", ["\x00;DROP TABLE x", "\u0661\u0662 ;'", "9" * 400 + "z"])
def test_hostile_values_are_refused_naming_the_setting(name, raw):
    load = exhaust_settings.load if name in exhaust_settings.ENV_VARS else config.load
    with pytest.raises(ConfigError) as info:
        load({name: raw})
    assert name in str(info.value)
    assert "Traceback" not in str(info.value) and len(str(info.value)) < 400


@pytest.mark.parametrize("name", ["PUI_LOG_INTERVAL", "PUI_STARTUP_TIMEOUT", "PUI_HEALTH_WINDOW"])
@pytest.mark.parametrize("raw", ["nan", "inf", "-inf"])
def test_seconds_are_finite(name, raw):
    """nan passed every comparison and became the log interval; inf waited forever."""
    with pytest.raises(ConfigError, match=f"{name} must be a finite number"):
        config.load({name: raw})


SECRET_VALUE = "s3cret-Value-42"


def test_every_secret_is_masked_wherever_settings_are_shown():
    streaming = {spec.var: SECRET_VALUE for _, spec in STREAMING if spec.secret}
    assert set(streaming) == {"PUI_CASSANDRA_PASSWORD"}
    env = {**streaming, "PUI_CASSANDRA_USERNAME": "u", "PUI_KAFKA_CONFIG_SASL_PASSWORD": "x"}
    env["PUI_KAFKA_CONFIG_SASL_PASSWORD"] = SECRET_VALUE
    s = config.load(env)
    assert s.cassandra_password == SECRET_VALUE and s.kafka_extra["sasl.password"] == SECRET_VALUE
    assert SECRET_VALUE not in s.describe() + repr(s)
    assert "cassandra_password=***" in s.describe()

    own = {spec.var: SECRET_VALUE for _, spec in EXHAUST if spec.secret}
    assert set(own) == {"PUI_ENCRYPTION_SALT"}
    e = exhaust_settings.load(own)
    assert e.salt == SECRET_VALUE
    assert SECRET_VALUE not in repr(e)  # the salt used to be in the repr


def test_dataflow_config_prints_settings_with_secrets_masked():
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PUI_")},
        "PUI_CASSANDRA_USERNAME": "cassandra",
        "PUI_CASSANDRA_PASSWORD": SECRET_VALUE,
        "PUI_KAFKA_CONFIG_SASL_PASSWORD": SECRET_VALUE,
        "PUI_KAFKA_CONFIG_SASL_USERNAME": "user",
        "PUI_KAFKA_CONFIG_SASL_MECHANISM": "PLAIN",
        "PUI_KAFKA_CONFIG_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    }
    out = subprocess.run(
        [sys.executable, "-m", "dataflow.config"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert SECRET_VALUE not in out.stdout + out.stderr
    assert "cassandra_password=***" in out.stdout and "'sasl.password': '***'" in out.stdout
    for attr, _ in STREAMING:
        assert f"\n{attr}=" in "\n" + out.stdout, attr


def test_help_lists_every_setting_with_its_default(capsys):
    with pytest.raises(SystemExit) as info:
        config.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in [*config.ENV_VARS, "PUI_KAFKA_CONFIG_*"]:
        assert name in out, name
    assert "PUI_BATCH_SIZE (default: 1000)" in out
    assert "`" not in out  # Markdown is for the README


def test_hocon_keys_are_read_from_the_table(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text('kafka { output.failed.topic = "x.failed" }\nml-cassandra.table = "t2"')
    s = config.load({"PUI_CONFIG": str(conf)})
    assert (s.failed_topic, s.cassandra_table) == ("x.failed", "t2")
    assert set(config.HOCON_KEYS.values()) <= set(config.ENV_VARS)


def test_docs_tables_are_generated_from_the_settings():
    stale = settings_docs.stale()
    assert not stale, (
        f"the settings tables of {', '.join(stale)} differ from dataflow/config.py and "
        f"dataflow/exhaust/settings.py: run {settings_docs.COMMAND}"
    )


def test_a_drifted_table_is_found_and_rewritten(tmp_path):
    for path, *_ in settings_docs.TABLES:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        text = (settings_docs.ROOT / path).read_text()
        (tmp_path / path).write_text(text.replace("| `PUI_", "| `PUI_OLD_", 1))
    assert settings_docs.stale(tmp_path) == [p for p, *_ in settings_docs.TABLES]
    text = (tmp_path / "README.md").read_text()
    name, source, rows = settings_docs.TABLES[0][1:]
    assert settings_docs.rewrite(text, name, source, rows()) == settings_docs.rewrite(
        (settings_docs.ROOT / "README.md").read_text(), name, source, rows()
    )


# Read by scripts, not by the settings classes: (name, a file that reads it).
SCRIPT_SETTINGS = {
    "PUI_RECOVERY_PARTS": "k8s/entrypoint.sh",
    "PUI_CASSANDRA_AUTH": "scripts/services.py",
}


def test_every_setting_the_docs_name_exists():
    """A renamed or removed setting must not live on in the docs."""
    from dataflow.exhaust import storage

    known = {*config.ENV_VARS, *exhaust_settings.ENV_VARS}
    known |= {f"{name}_FILE" for name in storage.SECRETS}  # a mounted Secret's file instead
    for name, script in SCRIPT_SETTINGS.items():
        assert name in (settings_docs.ROOT / script).read_text(), (name, script)
    known |= set(SCRIPT_SETTINGS)
    for doc in [settings_docs.ROOT / "README.md", *(settings_docs.ROOT / "docs").glob("*.md")]:
        named = set(re.findall(r"\bPUI_[A-Z0-9_]*[A-Z0-9]\b", doc.read_text()))
        unknown = {n for n in named - known if not n.startswith(config.KAFKA_CONFIG_PREFIX)}
        assert not unknown, f"{doc.name} names settings no code reads: {sorted(unknown)}"


def test_every_storage_setting_is_in_the_exhaust_docs():
    """The storage settings keep their own hand-written table (several Sunbird keys each)."""
    from dataflow.exhaust import storage

    text = (settings_docs.ROOT / "docs" / "exhaust.md").read_text()
    for name in [*storage.ENV_VARS, *(f"{s}_FILE" for s in storage.SECRETS)]:
        assert f"`{name}`" in text, name
