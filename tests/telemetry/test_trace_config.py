"""--trace-config parsing (Triton's syntax), the serve flags, and the trace settings' sampling rules."""

from __future__ import annotations

import pytest

from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.server.cli import build_parser
from tensorgate.server.errors import InvalidArgumentError
from tensorgate.server.telemetry.options import (
    DEFAULT_OTLP_HTTP_URL,
    TraceConfig,
    parse_trace_config,
    telemetry_settings_from_args,
)
from tensorgate.server.telemetry.trace_settings import Sampler, TraceSettings


def test_defaults_are_tritons() -> None:
    config = parse_trace_config([])
    assert (config.level, config.rate, config.count) == ("OFF", 1000, -1)
    assert config.otlp_protocol == "http/protobuf" and config.otlp_endpoint == DEFAULT_OTLP_HTTP_URL


def test_the_issue_example() -> None:
    config = parse_trace_config(
        ["mode=opentelemetry", "rate=1", "level=TIMESTAMPS", "opentelemetry,file=/tmp/t.jsonl"]
    )
    assert (config.level, config.rate, config.file) == ("TIMESTAMPS", 1, "/tmp/t.jsonl")
    assert config.otlp_protocol == ""  # a file alone: no collector needed


def test_otlp_endpoints_and_resources() -> None:
    grpc = parse_trace_config(["opentelemetry,url=grpc://collector:4317", "opentelemetry,resource=a=b=c",
                               "opentelemetry,resource=service.name=mine"])
    assert grpc.otlp_protocol == "grpc" and grpc.otlp_endpoint == "collector:4317"
    assert grpc.resource == (("a", "b=c"), ("service.name", "mine"))
    http = parse_trace_config(["opentelemetry,url=http://c:4318/v1/traces", "opentelemetry,file=x.jsonl"])
    assert http.otlp_protocol == "http/protobuf" and http.otlp_endpoint == "http://c:4318/v1/traces"
    forced = parse_trace_config(["opentelemetry,url=c:4317", "opentelemetry,protocol=grpc"])
    assert forced.otlp_protocol == "grpc" and forced.otlp_endpoint == "c:4317"
    sizes = parse_trace_config(["opentelemetry,bsp_max_queue_size=64", "opentelemetry,bsp_schedule_delay=100",
                                "opentelemetry,bsp_max_export_batch_size=32"])
    assert (sizes.bsp_max_queue_size, sizes.bsp_schedule_delay, sizes.bsp_max_export_batch_size) == (64, 100, 32)


@pytest.mark.parametrize(
    ("items", "fragment"),
    [
        (["level=TENSORS"], "TENSORS is not supported"),
        (["level=LOUD"], "unknown trace level"),
        (["rate=-1"], "must be >= 0"),
        (["count=-2"], "must be >= -1"),
        (["rate=x"], "must be an integer"),
        (["mode=triton"], "not supported"),
        (["triton,file=/tmp/x"], "Triton's own trace mode"),
        (["file=/tmp/x"], "opentelemetry,file=PATH"),
        (["opentelemetry,protocol=udp"], "unknown"),
        (["opentelemetry,resource=novalue"], "KEY=VALUE"),
        (["bogus=1"], "unknown setting"),
        (["rate"], "expected [mode,]setting=value"),
        (["opentelemetry,bsp_max_queue_size=8", "opentelemetry,bsp_max_export_batch_size=16"], "must not exceed"),
    ],
)
def test_bad_items_are_refused_with_the_reason(items: list[str], fragment: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        parse_trace_config(items)
    assert fragment in str(info.value)


def test_serve_flags() -> None:
    args = build_parser().parse_args([
        "serve", "--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=5", "--allow-metrics", "false",
        "--metrics-port", "9102", "--log-format", "json", "--log-info", "false",
    ])
    settings = telemetry_settings_from_args(args)
    assert settings.trace == TraceConfig(level="TIMESTAMPS", rate=5)
    assert not settings.allow_metrics and settings.metrics_port == 9102
    assert settings.log_format == "json" and not settings.log_info and settings.log_error


def test_a_bad_flag_exits_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--trace-config", "level=TENSORS"])
    assert "TENSORS is not supported" in capsys.readouterr().err


def test_sampler_traces_one_in_rate_while_count_lasts() -> None:
    sampler = Sampler("TIMESTAMPS", 2, 3)
    decisions = [sampler.sample() for _ in range(10)]
    assert decisions == [False, True, False, True, False, True, False, False, False, False]
    assert sampler.count == 0
    assert not any(Sampler("TIMESTAMPS", 0, -1).sample() for _ in range(5))  # rate 0: propagated only
    assert all(Sampler("TIMESTAMPS", 1, -1).sample() for _ in range(5))


def _request(model: str = "", **settings: list[str]) -> pb.TraceSettingRequest:
    request = pb.TraceSettingRequest(model_name=model)
    for key, values in settings.items():
        request.settings[key].value.extend(values)
    return request


def test_model_settings_follow_the_global_one_for_keys_they_do_not_set() -> None:
    settings = TraceSettings(TraceConfig(level="OFF", rate=1000))
    known = {"m1", "m2"}.__contains__
    settings.rpc(_request("m1", trace_level=["TIMESTAMPS"]), known)
    assert settings.sampler("m1").on and not settings.sampler("m2").on and settings.any_on
    settings.rpc(_request(trace_rate=["7"]), known)  # global change: m1 follows for the rate
    assert settings.sampler("m1").rate == 7 and settings.sampler("m1").level == "TIMESTAMPS"
    response = settings.rpc(_request("m1"), known)  # read only
    assert list(response.settings["trace_level"].value) == ["TIMESTAMPS"]
    assert list(response.settings["trace_rate"].value) == ["7"]
    assert list(response.settings["trace_mode"].value) == ["opentelemetry"]
    settings.rpc(_request("m1", trace_level=[]), known)  # clear: back to the global level
    assert not settings.sampler("m1").on and not settings.any_on
    settings.rpc(_request(trace_rate=[]), known)  # a global clear restores the startup value
    assert settings.sampler("m2").rate == 1000


@pytest.mark.parametrize(
    ("request_message", "fragment"),
    [
        (_request(trace_level=["TENSORS"]), "TENSORS"),
        (_request(trace_level=["LOUD"]), "unknown trace level"),
        (_request(trace_rate=["-3"]), ">= 0"),
        (_request(trace_count=["many"]), "integer"),
        (_request(trace_rate=["1", "2"]), "one value"),
        (_request(trace_file=["/tmp/elsewhere"]), "set at startup"),
        (_request(log_frequency=["50"]), "Triton's own trace files"),
        (_request(nonsense=["1"]), "unknown trace setting"),
        (_request("no_such_model", trace_rate=["1"]), "unknown model"),
    ],
)
def test_bad_trace_settings_are_invalid_arguments(request_message: pb.TraceSettingRequest, fragment: str) -> None:
    settings = TraceSettings(TraceConfig())
    with pytest.raises(InvalidArgumentError) as info:
        settings.rpc(request_message, {"m1"}.__contains__)
    assert fragment in str(info.value)
    assert settings.sampler("m1").rate == 1000  # nothing applied


def test_clearing_read_only_keys_is_harmless() -> None:
    """tritonclient's way to clear a model's settings sends every key empty, log_frequency included."""
    settings = TraceSettings(TraceConfig())
    settings.rpc(_request("m1", trace_level=["TIMESTAMPS"]), {"m1"}.__contains__)
    settings.rpc(_request("m1", trace_level=[], trace_rate=[], trace_count=[], log_frequency=[]), {"m1"}.__contains__)
    assert not settings.sampler("m1").on
