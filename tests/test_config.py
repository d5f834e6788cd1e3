"""Settings: defaults derived from PUI_ENV, env over HOCON, errors that name the setting."""

from __future__ import annotations

import pytest

from dataflow import config


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
    import re

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
