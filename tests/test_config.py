"""Settings: defaults derived from PUI_ENV, env over HOCON, errors that name the setting."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

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
STORAGE = st.specs(exhaust_settings.StorageSettings)
ALL_SPECS = [*STREAMING, *EXHAUST, *STORAGE]


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
    cls = exhaust_settings.StorageSettings if (attr, spec) in STORAGE else cls
    default = {f.name: f for f in dataclasses.fields(cls)}[attr].default
    if spec.derived:
        assert "{" in spec.default and default == ""  # filled in from the settings before it
    else:
        assert spec.parse(spec.var, spec.default) == default


def test_variable_names_are_unique_across_both_jobs():
    names = [*config.ENV_VARS, *exhaust_settings.ENV_VARS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", [*config.ENV_VARS[1:], *exhaust_settings.ENV_VARS])
def test_an_empty_variable_means_the_default(name):
    """As a ConfigMap that lists every setting has it; before, PUI_BATCH_SIZE="" was refused."""
    assert config.load({name: ""}) == config.load({})
    assert exhaust_settings.load({name: ""}) == exhaust_settings.load({})


# Parsers that take any text: secrets, and a path (whose characters the system checks).
_ANY_TEXT = {"text", "optional", "_path", "_secret"}
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
    known = {*config.ENV_VARS, *exhaust_settings.ENV_VARS}
    known |= set(exhaust_settings.FILE_VARS)  # a mounted Secret's file instead
    for name, script in SCRIPT_SETTINGS.items():
        assert name in (settings_docs.ROOT / script).read_text(), (name, script)
    known |= set(SCRIPT_SETTINGS)
    for doc in [settings_docs.ROOT / "README.md", *(settings_docs.ROOT / "docs").glob("*.md")]:
        named = set(re.findall(r"\bPUI_[A-Z0-9_]*[A-Z0-9]\b", doc.read_text()))
        unknown = {n for n in named - known if not n.startswith(config.KAFKA_CONFIG_PREFIX)}
        assert not unknown, f"{doc.name} names settings no code reads: {sorted(unknown)}"


def test_every_storage_setting_is_in_the_exhaust_table_and_help(capsys):
    """They were read by storage.py alone, listed in a hand-written table and nowhere else."""
    text = (settings_docs.ROOT / "docs" / "exhaust.md").read_text()
    begin = text.index("<!-- exhaust settings")
    table = text[begin : text.index("<!-- end of the exhaust settings", begin)]
    help_text = st.help_lines(exhaust_settings.doc_rows())
    names = [*st.variables(exhaust_settings.StorageSettings), *exhaust_settings.FILE_VARS]
    assert len(names) == 11
    for name in names:
        assert f"`{name}`" in table, name
        assert name in help_text, name
    assert set(exhaust_settings.SECRETS) >= {"PUI_STORAGE_KEY", "PUI_STORAGE_SECRET"}


# --- addresses, names and the other free-text settings ------------------------------------------


def _refused(name: str, value: str, environ: dict | None = None) -> str:
    """The one-line message that refuses ``value`` for the setting ``name``."""
    env = {**(environ or {}), name: value}
    load = exhaust_settings.load if name in exhaust_settings.ENV_VARS else config.load
    with pytest.raises(ConfigError) as info:
        load(env)
    message = str(info.value)
    assert name in message and "\n" not in message and len(message) < 300, message
    return message


@pytest.mark.parametrize(
    ("written", "loaded"),
    [
        ("kafka:9092", "kafka:9092"),
        ("10.0.0.5:9092,10.0.0.6:9092", "10.0.0.5:9092,10.0.0.6:9092"),
        # Spaces around the commas: librdkafka drops them, and so do we.
        ("kafka-0:9092, kafka-1:9092 ,kafka-2:9092", "kafka-0:9092,kafka-1:9092,kafka-2:9092"),
        ("kafka.kafka.svc.cluster.local.:9092", "kafka.kafka.svc.cluster.local.:9092"),
        ("b-1.msk_cluster.kafka.ap-south-1.amazonaws.com:9094", None),
        ("[::1]:9092,[fd00::5]:19092", None),
        ("kafka:9092\n", "kafka:9092"),  # a YAML block scalar's newline
        ("PLAINTEXT://kafka:9092", None),
        ("plaintext://a:1,b:65535", None),
        # No port: Kafka's 9092, as librdkafka reads it; such lists worked before.
        ("kafka", None),
        ("kafka-0,kafka-1:9093,[::1]", None),
    ],
)
def test_broker_lists_real_deployments_write_load(written, loaded):
    assert config.load({"PUI_KAFKA_BROKERS": written}).kafka_brokers == (loaded or written)


def test_a_broker_prefix_matches_the_security_protocol():
    """librdkafka drops a broker whose prefix differs from security.protocol, with a log line
    only: the job then waited for no broker at all."""
    env = {"PUI_KAFKA_BROKERS": "SASL_SSL://k1:9093,sasl_ssl://k2:9093"}
    env["PUI_KAFKA_CONFIG_SECURITY_PROTOCOL"] = "SASL_SSL"
    assert config.load(env).kafka_brokers == "SASL_SSL://k1:9093,sasl_ssl://k2:9093"
    message = _refused("PUI_KAFKA_BROKERS", "SSL://k1:9093")
    assert "SSL://" in message and "PLAINTEXT" in message
    env["PUI_KAFKA_CONFIG_SECURITY_PROTOCOL"] = "SSL"
    assert "SASL_SSL://" in _refused("PUI_KAFKA_BROKERS", env.pop("PUI_KAFKA_BROKERS"), env)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("kafka:", "port ''"),
        ("kafka:0", "port '0'"),
        ("kafka:99999", "port '99999'"),  # librdkafka wraps it to 34463
        ("kafka:90a", "port '90a'"),
        ("kafka:+92", "port '+92'"),
        ("kafka:\u0669\u0660", "not a number"),
        ("a:1,,b:2", "empty entry"),
        ("a:1,", "empty entry"),
        (",a:1", "empty entry"),
        (" , ", "empty entry"),
        ("kafka 1:9092", "contains a space"),
        ("kafka:\u00a09092", "contains a space"),
        ("kafka:9092\x00", "control characters"),
        ("k1:9092\nk2:9092", "control characters"),
        ("kafka\x1b[2J:9092", "control characters"),
        ("::1:9092", "IPv6 address without brackets"),
        ("[::g]:9092", "IPv6"),
        ("10.0.0.300:9092", "not an IPv4 address"),
        ("-kafka:9092", "not a host name"),
        ("kafka..local:9092", "not a host name"),
        ("k\u00e4fka:9092", "not a host name"),
        ("kafka;rm -rf:9092", "contains a space"),
        ("kafka;x:9092", "not a host name"),
        ("http://kafka:9092", "prefix 'http'"),
        ("SASL://kafka:9092", "prefix 'SASL'"),  # librdkafka: unsupported protocol
        ("a:1," * 100 + "a:1", "at most 100"),
        ("x" * 300 + ":9092", "not a host name"),
    ],
)
def test_bad_broker_lists_are_refused_in_one_line(value, words):
    message = _refused("PUI_KAFKA_BROKERS", value)
    assert words in message
    assert "\x00" not in message and "\x1b" not in message and "\n" not in message


def test_a_refused_value_is_quoted_and_cut_to_60_characters():
    value = "kafka-" + "x" * 200 + ":9092"
    message = _refused("PUI_KAFKA_BROKERS", value)
    assert repr(value[:60]) + "..." in message and value not in message


_label = hs.from_regex(r"[a-z0-9_](?:[a-z0-9_-]{0,14}[a-z0-9_])?", fullmatch=True)
_hostname = hs.lists(_label, min_size=1, max_size=4).map(".".join)
# All digits and dots would be read as an IPv4 address.
_hostname = _hostname.filter(lambda h: not re.fullmatch(r"[0-9.]+", h))
_host = hs.one_of(
    _hostname,
    hs.ip_addresses(v=4).map(str),
    hs.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
_broker = hs.builds(lambda h, p: f"{h}:{p}", _host, hs.integers(1, 65535))
_brokers = hs.lists(_broker, min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(_brokers, hs.lists(hs.sampled_from(["", " ", "  "]), min_size=12, max_size=12))
def test_every_valid_broker_list_loads_and_round_trips(brokers, pads):
    written = ",".join(f"{pads[i]}{b}{pads[-i - 1]}" for i, b in enumerate(brokers))
    loaded = config.load({"PUI_KAFKA_BROKERS": written}).kafka_brokers
    assert loaded == ",".join(brokers)
    assert config.load({"PUI_KAFKA_BROKERS": loaded}).kafka_brokers == loaded


_SPOILERS = {
    "port 0": lambda b: b.rsplit(":", 1)[0] + ":0",
    "port too big": lambda b: b.rsplit(":", 1)[0] + ":65536",
    "space inside": lambda b: (
        b.replace(":", " :", 1) if not b.startswith("[") else b[:2] + " " + b[2:]
    ),
    "control": lambda b: b[:1] + "\t" + b[1:],
    "empty": lambda b: "",
}


@settings(max_examples=200, deadline=None)
@given(_brokers, hs.integers(0, 5), hs.sampled_from(sorted(_SPOILERS)))
def test_a_list_with_one_bad_broker_is_refused(brokers, at, spoil):
    brokers[at % len(brokers)] = _SPOILERS[spoil](brokers[at % len(brokers)])
    written = ",".join(brokers)
    if not written.strip():
        return  # the empty variable is the default
    _refused("PUI_KAFKA_BROKERS", written)


@pytest.mark.parametrize(
    ("written", "loaded"),
    [
        ("cassandra", ("cassandra",)),
        ("10.0.0.7, 10.0.0.8,10.0.0.9", ("10.0.0.7", "10.0.0.8", "10.0.0.9")),
        ("cassandra-0.cassandra.db.svc.cluster.local", None),
        ("::1", ("::1",)),  # what cassandra-driver takes
        ("[fd00::7]", ("fd00::7",)),
        ("cassandra\n", ("cassandra",)),
    ],
)
def test_cassandra_hosts_deployments_write_load(written, loaded):
    assert config.load({"PUI_CASSANDRA_HOSTS": written}).cassandra_hosts == (loaded or (written,))


@pytest.mark.parametrize(
    ("value", "words"),
    [
        # Both engines add PUI_CASSANDRA_PORT to each host: "a:9042" became "a:9042:9042".
        ("cassandra:9042", "has a port: give it in PUI_CASSANDRA_PORT"),
        ("[::1]:9042", "has a port"),
        ("a,,b", "empty entry"),
        ("a,", "empty entry"),
        ("cass andra", "contains a space"),
        ("cassandra\x00", "control characters"),
        ("10.0.0.256", "not an IPv4 address"),
        ("cass'andra", "not a host name"),
        ("::g", "not a host name"),
    ],
)
def test_bad_cassandra_hosts_are_refused_in_one_line(value, words):
    assert words in _refused("PUI_CASSANDRA_HOSTS", value)


@settings(max_examples=200, deadline=None)
@given(hs.lists(hs.one_of(_hostname, hs.ip_addresses().map(str)), min_size=1, max_size=6))
def test_every_valid_cassandra_host_list_loads_and_round_trips(hosts):
    loaded = config.load({"PUI_CASSANDRA_HOSTS": " , ".join(hosts)}).cassandra_hosts
    assert loaded == tuple(hosts)
    assert config.load({"PUI_CASSANDRA_HOSTS": ",".join(loaded)}).cassandra_hosts == loaded


@pytest.mark.parametrize("group", ["dev-programuser-group", "ml.program_user.info:v2", "g" * 255])
def test_group_ids_deployments_write_load(group):
    assert config.load({"PUI_GROUP_ID": group}).group_id == group


@pytest.mark.parametrize(
    "group",
    [" group", "my group", "group\n", "gr\x00oup", "gr\x1b[2Joup", "gr\u00fcppe", "g" * 256],
)
def test_bad_group_ids_are_refused(group):
    """The group id is logged and sent with every commit: it was any text, newlines included."""
    assert "consumer group id" in _refused("PUI_GROUP_ID", group)


def test_a_bad_group_id_in_the_hocon_file_names_its_key(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text('kafka { groupId = "dev group" }')
    with pytest.raises(ConfigError, match=r"^kafka.groupId \(in PUI_CONFIG\) must be"):
        config.load({"PUI_CONFIG": str(conf)})


@pytest.mark.parametrize("topic", [".", ".."])
def test_the_two_topic_names_kafka_refuses_are_refused(topic):
    _refused("PUI_INPUT_TOPIC", topic)
    _refused("PUI_FAILED_TOPIC", topic)


# Secrets and what holds one: any text there may be right, and it is never shown.
_FREE = {
    "PUI_CASSANDRA_PASSWORD",
    "PUI_ENCRYPTION_SALT",
    "PUI_STORAGE_SECRET",
}


@pytest.mark.parametrize(
    "name", [n for _, spec in ALL_SPECS if spec.parse for n in (spec.var,) if n not in _FREE]
)
@pytest.mark.parametrize("control", ["\x00", "\n", "\x1b[2J", "\x85"])
def test_every_non_secret_setting_refuses_control_characters(name, control):
    """Before, a NUL in PUI_REPORT_STORE failed later with a stack trace, and the group id,
    user name, datacenter, hosts and brokers took newlines and terminal escapes into the log."""
    environ = {"PUI_CASSANDRA_PASSWORD": "pw"} if name == "PUI_CASSANDRA_USERNAME" else {}
    message = _refused(name, f"a{control}b", environ)
    assert control not in message


@pytest.mark.parametrize(
    ("name", "value", "secret"),
    [
        ("PUI_POSTGRES_DSN", "postgresql://pui:Hunter2-pw@db:5432/pui\nx", "Hunter2-pw"),
        ("PUI_POSTGRES_DSN", "host=db password=Hunter2-pw oops", "Hunter2-pw"),
        ("PUI_POSTGRES_DSN", "postgresql://pui:Hunter2-pw@db:5432/pui?bogus=1", "Hunter2-pw"),
        ("PUI_REDIS_URL", "redis://:Hunter2-pw @cache:6379/12", "Hunter2-pw"),
        ("PUI_STORAGE_KEY", "AKIA Hunter2-pw", "Hunter2-pw"),
        ("PUI_STORAGE_KEY", "Hunter2-pw" * 30, "Hunter2-pw"),
    ],
)
def test_a_refused_value_that_may_hold_a_secret_is_never_shown(name, value, secret):
    assert secret not in _refused(name, value)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres@127.0.0.1:5432/pui",
        "postgres://pui:pw@db.example.org/pui?sslmode=verify-full",
        "postgresql://postgres@127.0.0.1:5432/pui?options=-csearch_path%3Dt1",
        "host=db port=5432 dbname=pui user=pui",
    ],
)
def test_postgres_connection_strings_deployments_write_load(dsn):
    assert exhaust_settings.load({"PUI_POSTGRES_DSN": dsn}).postgres_dsn == dsn


def test_urls_from_a_secrets_file_lose_their_newline():
    loaded = exhaust_settings.load(
        {"PUI_REDIS_URL": "redis://:pw@cache:6379/12\n", "PUI_POSTGRES_DSN": "host=db dbname=a\n"}
    )
    assert (loaded.redis_url, loaded.postgres_dsn) == (
        "redis://:pw@cache:6379/12",
        "host=db dbname=a",
    )


def test_the_model_config_must_be_a_readable_file(tmp_path):
    """It failed only once a worker built its first report."""
    assert "not a readable file" in _refused("PUI_EXHAUST_MODEL_CONFIG", str(tmp_path / "no"))
    model = tmp_path / "model.json"
    model.write_text("{}")
    loaded = exhaust_settings.load({"PUI_EXHAUST_MODEL_CONFIG": str(model)})
    assert loaded.model_config == str(model)


@pytest.mark.parametrize(
    ("name", "value"),
    [("PUI_CASSANDRA_USERNAME", "cassandra admin"), ("PUI_CASSANDRA_LOCAL_DC", "dc\u00e9")],
)
def test_cassandra_names_are_visible_ascii(name, value):
    environ = {"PUI_CASSANDRA_USERNAME": "u", "PUI_CASSANDRA_PASSWORD": "pw"}
    _refused(name, value, environ)
    loaded = config.load({**environ, name: "dc-1_a.b"})
    assert "dc-1_a.b" in (loaded.cassandra_username, loaded.cassandra_local_dc)


# --- the storage settings: in the exhaust's table ------------------------------------------------


def test_storage_settings_are_read_through_the_table(tmp_path):
    """Same names, defaults and _FILE variables as when storage.py read them itself."""
    from dataflow.exhaust import storage

    assert storage.load({}) == exhaust_settings.StorageSettings()
    assert exhaust_settings.load({}).storage == exhaust_settings.StorageSettings()
    defaults = {spec.var: spec.default for _, spec in STORAGE}
    assert defaults == {
        "PUI_STORAGE_TYPE": "local",
        "PUI_STORAGE_CONTAINER": "reports",
        "PUI_STORAGE_PREFIX": "ml_reports",
        "PUI_STORAGE_KEY": "",
        "PUI_STORAGE_SECRET": "",
        "PUI_STORAGE_ENDPOINT": "",
        "PUI_STORAGE_REGION": "",
        "PUI_STORAGE_URL_EXPIRY": "3600",
        "PUI_STORAGE_PART_SIZE": str(8 * 1024 * 1024),
    }
    key = tmp_path / "key"
    key.write_text("acct-from-file\n")
    account_key = "czNjcmV0LVZhbHVlLTQy"  # Azure takes base64 only
    loaded = exhaust_settings.load(
        {
            "PUI_STORAGE_TYPE": "azure",
            "PUI_STORAGE_KEY_FILE": str(key),
            "PUI_STORAGE_SECRET": account_key,
            "PUI_STORAGE_URL_EXPIRY": "600",
        }
    ).storage
    assert (loaded.kind, loaded.key, loaded.secret, loaded.url_expiry) == (
        "azure",
        "acct-from-file",
        account_key,
        600,
    )
    shown = loaded.describe() + repr(loaded)
    assert account_key not in shown and "acct-from-file" not in shown
    assert "storage.key=***" in shown and "storage.url_expiry=600" in shown


def test_the_exhaust_help_lists_every_setting():
    from dataflow.exhaust.__main__ import parser

    text = parser().format_help()
    for name in [*exhaust_settings.ENV_VARS, *exhaust_settings.FILE_VARS]:
        assert name in text, name
    assert "PUI_STORAGE_PART_SIZE (default: 8388608)" in text


@pytest.mark.parametrize(
    "written",
    [
        "postgresql://pui:{pw}@db:5432/pui",
        "postgresql://pui:{pw}@db/pui?sslmode=require",
        "postgresql://pui@db/pui?sslmode=require&password={pw}",
        "host=db dbname=pui user=pui password={pw}",
        "host=db password = '{pw} with spaces' dbname=pui",
        "redis://:{pw}@cache:6379/12",
        "rediss://default:{pw}@cache:6380/12",
    ],
)
def test_a_password_in_a_connection_string_is_never_shown(written):
    password = "s3cr3t-Pa55"
    dsn_or_url = written.format(pw=password)
    masked = exhaust_settings.without_password(dsn_or_url)
    assert password not in masked and "***" in masked
    var = "PUI_REDIS_URL" if dsn_or_url.startswith("redis") else "PUI_POSTGRES_DSN"
    loaded = exhaust_settings.load({var: dsn_or_url})
    assert password not in repr(loaded)
    assert password not in st.describe(loaded)
    assert dsn_or_url in (loaded.postgres_dsn, loaded.redis_url)  # what connects is intact


def test_a_connection_string_without_a_password_is_shown_as_written():
    for text in ("postgresql://postgres@127.0.0.1:5432/pui", "redis://127.0.0.1:6379/12"):
        assert exhaust_settings.without_password(text) == text
    described = st.describe(exhaust_settings.load({}))
    assert "postgresql://postgres@127.0.0.1:5432/pui" in described


@settings(max_examples=200, deadline=None)
@given(hs.text(alphabet=hs.characters(codec="ascii", categories=["L", "N", "P", "S"]),
               min_size=4, max_size=30).filter(lambda p: not set(p) & set("/@:'\\ &")))  # fmt: skip
def test_any_url_password_is_masked(password):
    url = f"redis://user:{password}@cache:6379/12"
    assert exhaust_settings.without_password(url) == "redis://user:***@cache:6379/12"
