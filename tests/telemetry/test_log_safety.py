"""LogSettings cannot reach the file system and clients cannot forge log lines (issue 11 part 3)."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from telemetry_support import wait_for

from support import serve_subprocess
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc
from tensorgate.server.errors import InvalidArgumentError
from tensorgate.server.telemetry.logs import LogControl, request_fields

FORGED = "m\nINFO tensorgate.app: FORGED line\r\u2028\x1b[31m\x85"


def _log_file(path: str) -> pb.LogSettingsRequest:
    request = pb.LogSettingsRequest()
    request.settings["log_file"].string_param = path
    return request


@pytest.fixture()
def logged(tmp_path: Path) -> Iterator[tuple[LogControl, logging.Logger, io.StringIO, Path]]:
    logger = logging.getLogger("tensorgate-log-safety-test")
    logger.propagate = False
    stream = io.StringIO()
    folder = tmp_path / "logs"
    folder.mkdir()
    ctl = LogControl()
    ctl.install(stream=stream, logger=logger, log_dir=str(folder))
    yield ctl, logger, stream, folder
    ctl.uninstall()


def test_without_log_dir_the_log_file_cannot_move(tmp_path: Path) -> None:
    logger = logging.getLogger("tensorgate-log-safety-nodir")
    logger.propagate = False
    ctl = LogControl()
    ctl.install(stream=io.StringIO(), logger=logger)
    try:
        with pytest.raises(InvalidArgumentError, match="--log-dir"):
            ctl.rpc(_log_file(str(tmp_path / "anywhere.log")))
        assert not (tmp_path / "anywhere.log").exists()
    finally:
        ctl.uninstall()


def test_log_file_inside_log_dir_is_used(logged: tuple[LogControl, logging.Logger, io.StringIO, Path]) -> None:
    ctl, logger, stream, folder = logged
    assert ctl.rpc(_log_file("server.log")).settings["log_file"].string_param == "server.log"
    logger.warning("into the file")
    ctl.rpc(_log_file(str(folder / "second.log")))  # an absolute path inside the folder is fine too
    logger.warning("into the second file")
    ctl.rpc(_log_file(""))  # back to the stream
    logger.warning("into the stream")
    assert "into the file" in (folder / "server.log").read_text()
    assert "into the second file" in (folder / "second.log").read_text()
    assert "into the stream" in stream.getvalue() and "file" not in stream.getvalue()


@pytest.mark.parametrize("where", ["../escape.log", "/tmp/tensorgate-escape.log", "sub/../../escape.log", ".."])
def test_paths_out_of_the_log_dir_are_refused(
    logged: tuple[LogControl, logging.Logger, io.StringIO, Path], where: str
) -> None:
    ctl, _, _, folder = logged
    with pytest.raises(InvalidArgumentError, match="inside"):
        ctl.rpc(_log_file(where))
    assert not (folder.parent / "escape.log").exists() and not Path("/tmp/tensorgate-escape.log").exists()


def test_symlinks_do_not_lead_out(logged: tuple[LogControl, logging.Logger, io.StringIO, Path]) -> None:
    ctl, _, _, folder = logged
    outside = folder.parent / "outside"
    outside.mkdir()
    target = outside / "victim.log"
    target.write_text("untouched\n")
    (folder / "link.log").symlink_to(target)
    (folder / "linkdir").symlink_to(outside, target_is_directory=True)
    (folder / "dangling.log").symlink_to(outside / "created.log")
    for name in ("link.log", "linkdir/victim.log", "dangling.log", str(folder / "link.log")):
        with pytest.raises(InvalidArgumentError):
            ctl.rpc(_log_file(name))
    assert target.read_text() == "untouched\n" and not (outside / "created.log").exists()
    os.mkfifo(folder / "pipe.log")
    with pytest.raises(InvalidArgumentError):
        ctl.rpc(_log_file("pipe.log"))
    assert ctl.file == ""


def test_plain_lines_escape_client_strings(logged: tuple[LogControl, logging.Logger, io.StringIO, Path]) -> None:
    ctl, logger, stream, _ = logged
    for log_format in ("default", "ISO8601"):
        request = pb.LogSettingsRequest()
        request.settings["log_format"].string_param = log_format
        ctl.rpc(request)
        logger.warning("unknown model '%s'", FORGED)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and not any(line.startswith("INFO") or "FORGED" == line[:6] for line in lines)
    assert all("m\\nINFO tensorgate.app: FORGED line\\r\\u2028\\x1b[31m\\x85" in line for line in lines)


def test_json_lines_escape_messages_and_fields(logged: tuple[LogControl, logging.Logger, io.StringIO, Path]) -> None:
    ctl, logger, stream, _ = logged
    request = pb.LogSettingsRequest()
    request.settings["log_format"].string_param = "json"
    ctl.rpc(request)
    logger.error("request %r failed for '%s'", "id", FORGED, extra=request_fields(FORGED, "", "INTERNAL"))
    text = stream.getvalue()
    assert len(text.splitlines()) == 1 and "\u2028" not in text and "\x85" not in text
    line = json.loads(text)
    assert "\n" not in line["message"] and "\\n" in line["message"] and "\n" not in line["request_id"]


def test_served_log_settings_and_forged_names(tmp_path: Path) -> None:
    """A real `tensorgate serve --log-dir`: the RPC stays in the folder; a forged model name stays on one line."""
    from tensorgate.server.demo.models import build_add_sub

    build_add_sub(tmp_path / "repo" / "simple" / "1" / "model.onnx")
    folder = tmp_path / "logs"
    folder.mkdir()
    with serve_subprocess(tmp_path / "repo", "--log-dir", str(folder), "--log-file", str(folder / "start.log"),
                          "--log-verbose", "1", "--allow-metrics", "false") as (_, port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.LogSettings(_log_file(str(tmp_path / "evil.log")))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            stub.LogSettings(_log_file("moved.log"))
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(pb.ModelInferRequest(model_name=FORGED, id="a\nFORGED id"))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            text = wait_for(lambda: (folder / "moved.log").exists() and "FORGED" in (folder / "moved.log").read_text()
                            and (folder / "moved.log").read_text())
    assert not (tmp_path / "evil.log").exists()
    assert not any(line.startswith(("INFO tensorgate.app: FORGED", "FORGED", " FORGED")) for line in text.splitlines())
    assert "\\nINFO tensorgate.app: FORGED line" in text
