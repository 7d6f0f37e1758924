"""The pytest plugin's wiring, through pytester (no servers are started here)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_options_are_in_their_own_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines([
        "agentverify: production-readiness rehearsals:",
        "*--agentverify-env=AGENTVERIFY_ENV*",
        "*--agentverify-config=AGENTVERIFY_CONFIG*",
        "*--agentverify-backend={auto,docker,local}*",
        "*--agentverify-load-workers=AGENTVERIFY_LOAD_WORKERS*",
        "*--agentverify-set=KEY=VALUE*",
    ])


def test_fixtures_are_provided(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--fixtures")
    result.stdout.fnmatch_lines(["agent_stack*", "*Stack*", "agent_client*", "prometheus*"])


def test_unknown_environment_is_a_one_line_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", agentverify="environments: {dev: {}, staging: {}}\n")
    result = pytester.runpytest("--agentverify-env", "qa")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: agentverify: *agentverify.yaml: environments: "
                                 "unknown environment 'qa'; expected one of: dev, staging"])
    assert "Traceback" not in result.stderr.str()


def test_bad_config_value_is_a_one_line_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", agentverify="stack: {replicas: three}\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: agentverify: *agentverify.yaml: stack.replicas: "
                                 "expected an integer, got 'three'"])


def test_ini_options_and_command_line_precedence(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nagentverify_env = staging\nagentverify_set = stack.replicas=4\n")
    pytester.makepyfile(test_env="""
        def test_env(agentverify_config, request):
            expected = request.config.getoption("expected")
            assert agentverify_config.environment == expected.split(",")[0]
            assert agentverify_config.stack.replicas == int(expected.split(",")[1])
    """)
    pytester.makeconftest("""
        def pytest_addoption(parser):
            parser.addoption("--expected")
    """)
    pytester.runpytest("--expected", "staging,4", "--agentverify-backend", "local"
                       ).assert_outcomes(passed=1)
    pytester.runpytest("--expected", "production,5", "--agentverify-env", "production",
                       "--agentverify-set", "stack.replicas=5", "--agentverify-backend", "local"
                       ).assert_outcomes(passed=1)


def test_malformed_scenario_is_a_failed_item_and_the_run_goes_on(
        pytester: pytest.Pytester) -> None:
    scenarios = pytester.mkdir("scenarios")
    (scenarios / "broken.yaml").write_text("name: broken\nsteps:\n  - helth: {}\n")
    (scenarios / "prod_only.yaml").write_text(
        "name: prod-only\nenvironments: [production]\nsteps: [{health: {}}]\n"
        "expect: {unhealthy_replicas: '== 0'}\n")
    pytester.makepyfile(test_other="def test_other():\n    assert True\n")
    result = pytester.runpytest("--agentverify-env", "staging", "--agentverify-backend",
                                "local", "-rs")
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    result.stdout.fnmatch_lines([
        "*invalid scenario file: *broken.yaml: scenario 'broken': step 1: unknown step type "
        "'helth'; expected one of:*",
        "*scenario applies to production; this run is staging*",
    ])
    assert "Traceback" not in result.stdout.str()


def test_scenario_items_are_named_by_scenario_and_backend(pytester: pytest.Pytester) -> None:
    scenarios = pytester.mkdir("scenarios")
    (scenarios / "two.yaml").write_text(
        "scenarios:\n  - {name: first, steps: [health]}\n  - {name: second, steps: [health]}\n")
    result = pytester.runpytest("--collect-only", "-q", "--agentverify-backend", "local")
    result.stdout.fnmatch_lines(["scenarios/two.yaml::first[[]local[]]",
                                 "scenarios/two.yaml::second[[]local[]]"])


def test_hookspecs_are_registered(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        def pytest_agentverify_scenario_finished(result):
            pass
    """)
    pytester.makepyfile(test_hooks="""
        def test_hooks(request):
            hook = request.config.hook
            for name in ("pytest_agentverify_make_backend", "pytest_agentverify_stack_ready",
                         "pytest_agentverify_scenario_finished",
                         "pytest_agentverify_write_report"):
                assert hasattr(hook, name), name
    """)
    pytester.runpytest().assert_outcomes(passed=1)
