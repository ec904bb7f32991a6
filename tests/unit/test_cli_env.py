"""A SPENDWATCH_* variable that names no setting is ignored by the settings loader: the command line says so."""

from __future__ import annotations

import logging

from watcher.cli.common import warn_unknown_env
from watcher.cli.main import _os_error_hint, build_parser
from watcher.config import Settings

SECTIONS = list(Settings.model_fields)


def test_a_typo_in_a_variable_name_is_warned_about_with_the_likely_name(caplog):
    env = {"SPENDWATCH_KAFKA_BOOTSTRAP": "k:9092", "SPENDWATCH_KAFAK__BOOTSTRAP": "k:9092",
           "SPENDWATCH_KAFKA__BOOTSTRAP": "k:9092", "SPENDWATCH_LOG_LEVEL": "INFO", "SPENDWATCH_ADMIN_TOKEN": "t",
           "SPENDWATCH_WEBHOOK_SECRET": "s", "HOME": "/root"}
    with caplog.at_level(logging.WARNING):
        unknown = warn_unknown_env(SECTIONS, env)
    assert unknown == ["SPENDWATCH_KAFAK__BOOTSTRAP", "SPENDWATCH_KAFKA_BOOTSTRAP"]
    assert "did you mean SPENDWATCH_KAFKA__BOOTSTRAP?" in caplog.text


def test_log_level_is_accepted_before_and_after_the_command():
    assert build_parser().parse_args(["run", "--log-level", "debug"]).log_level == "DEBUG"
    assert build_parser().parse_args(["--log-level", "WARNING", "run"]).log_level == "WARNING"
    assert build_parser().parse_args(["breaker", "list", "--log-level", "ERROR"]).log_level == "ERROR"
    assert not hasattr(build_parser().parse_args(["run"]), "log_level")


def test_a_port_in_use_names_the_option_of_that_command():
    import errno

    busy = OSError(errno.EADDRINUSE, "address already in use")
    assert "--port" in _os_error_hint(busy, "facilitator")
    assert "metrics.port" in _os_error_hint(busy, "run") and "admin.port" in _os_error_hint(busy, "run")
    assert "chain.metrics_port" in _os_error_hint(busy, "chain")
    assert "port" not in _os_error_hint(OSError(errno.ENOENT, "No such file or directory"), "run")
