"""A model's config read once into a frozen, picklable plan; one spelling of "true"; bad values fail the load."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from lifecycle_support import ADD_SUB_CONFIG, index_rows, infer_add_sub

from support import running_server, write_model
from tensorgate.clients import InferenceClient
from tensorgate.clients.pb import model_config_pb2 as mc
from tensorgate.server.engine_factory import ort_options, place
from tensorgate.server.errors import LoadError
from tensorgate.server.model import ModelState, load_model_version
from tensorgate.server.parameters import FALSE_WORDS, TRUE_WORDS, ParameterError, parse_bool
from tensorgate.server.plan import ModelPlan, QueuePolicy, read_plan
from tensorgate.server.repository import read_model_source


def _config(text: str) -> mc.ModelConfig:
    return text_format.Parse('name: "m"\n' + text, mc.ModelConfig())


def _param(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'


FULL = """
max_batch_size: 16
dynamic_batching {
  preferred_batch_size: [ 4, 8, 32 ]
  max_queue_delay_microseconds: 1500
  preserve_ordering: true
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy { max_queue_size: 5 default_timeout_microseconds: 1000 }
  priority_queue_policy { key: 1 value: { timeout_action: DELAY default_timeout_microseconds: 20
                                          allow_timeout_override: true } }
}
instance_group [ { name: "g" kind: KIND_CPU count: 3 } ]
optimization { graph { level: 1 } }
response_cache { enable: true }
""" + _param("adaptive_queue_delay", "off") + _param("intra_op_thread_count", "3") + _param(
    "allow_spinning", "Yes") + _param("precision_mode", "fp16") + _param("drift_monitor", "classifier") + _param(
    "drift_window", "100")


def test_every_part_of_the_config_is_in_the_plan() -> None:
    plan = read_plan(_config(FULL), 7)
    assert (plan.model, plan.version, plan.max_batch_size) == ("m", 7, 16)
    b = plan.batching
    assert b.scheduled and b.dynamic and b.max_rows == 16 and b.queue_delay_us == 1500 and b.delay_ns == 1_500_000
    assert b.preferred_sizes == (4, 8, 32) and b.preferred == (4, 8)  # 32 is beyond max_batch_size
    assert b.preserve_ordering and not b.adaptive_delay and (b.priority_levels, b.default_level) == (2, 2)
    default = QueuePolicy(max_size=5, default_timeout_us=1000)
    assert b.policies == (default, QueuePolicy(0, 20, delay_on_timeout=True, allow_override=True), default)
    assert plan.instances.count == 3 and plan.instances.groups[0].name == "g"
    assert plan.engine.intra_op_threads == 3 and plan.engine.allow_spinning and plan.engine.graph_level == 1
    assert plan.engine.options.cpu.precision == "FP16"
    assert plan.drift is not None and (plan.drift.kind, plan.drift.window) == ("classifier", 100)
    assert plan.response_cache and plan.tokenizer is None


def test_the_plan_is_frozen_and_crosses_a_process_boundary() -> None:
    plan = read_plan(_config(FULL), 7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.max_batch_size = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.batching.queue_delay_us = 0  # type: ignore[misc]
    copy = pickle.loads(pickle.dumps(plan))
    assert isinstance(copy, ModelPlan) and copy == plan


def test_completion_fills_the_structural_fields_and_keeps_the_parameters() -> None:
    given = _config(_param("adaptive_queue_delay", "false"))
    plan = read_plan(given, 1)
    assert plan.max_batch_size == 0 and not plan.batching.scheduled and plan.instances.count == 2
    effective = _config("max_batch_size: 4\ndynamic_batching { }\ninstance_group [ { kind: KIND_CPU count: 2 } ]\n")
    done = plan.completed(effective)
    assert done.max_batch_size == 4 and done.batching.dynamic and done.batching.max_rows == 4
    assert not done.batching.adaptive_delay  # read once from the given config's parameters
    assert done.instances.count == 2 and done.engine == plan.engine


@pytest.mark.parametrize("word", [*TRUE_WORDS, "TRUE", " On ", "Yes"])
def test_every_true_spelling_means_true_everywhere(word: str) -> None:
    assert parse_bool(word, "k") is True
    plan = read_plan(_config("max_batch_size: 4\ndynamic_batching { }\n" + _param("adaptive_queue_delay", word)
                             + _param("allow_spinning", word) + _param("drift_monitor", word)))
    assert plan.batching.adaptive_delay and plan.engine.allow_spinning and ort_options(plan).allow_spinning
    assert plan.drift is not None and plan.drift.kind == "auto"
    tokenizer = read_plan(_config('backend: "tokenizer"\n' + _param("truncation", word)
                                  + _param("add_special_tokens", word)))
    assert tokenizer.tokenizer is not None and tokenizer.tokenizer.truncation


@pytest.mark.parametrize("word", [*FALSE_WORDS, "FALSE", " Off ", "No"])
def test_every_false_spelling_means_false_everywhere(word: str) -> None:
    assert parse_bool(word, "k") is False
    plan = read_plan(_config("max_batch_size: 4\ndynamic_batching { }\n" + _param("adaptive_queue_delay", word)
                             + _param("allow_spinning", word) + _param("drift_monitor", word)
                             + _param("int8_fp16_base", word)))
    assert not plan.batching.adaptive_delay and not plan.engine.allow_spinning and plan.drift is None
    assert not plan.engine.options.gpu.int8_fp16_base
    tokenizer = read_plan(_config('backend: "tokenizer"\n' + _param("truncation", word)))
    assert tokenizer.tokenizer is not None and not tokenizer.tokenizer.truncation


@pytest.mark.parametrize("key", ["adaptive_queue_delay", "allow_spinning", "int8_fp16_base", "drift_monitor"])
@pytest.mark.parametrize("word", ["maybe", "2", "enabled", "tru"])
def test_any_other_word_is_refused_naming_the_key_and_the_value(key: str, word: str) -> None:
    with pytest.raises(ParameterError, match=f"parameter {key} must be .*true or false.*got '{word}'"):
        read_plan(_config("max_batch_size: 4\ndynamic_batching { }\n" + _param(key, word)))


def test_tokenizer_booleans_are_refused_alike() -> None:
    with pytest.raises(ParameterError, match=r"parameter truncation must be true or false.*got 'sometimes'"):
        read_plan(_config('backend: "tokenizer"\n' + _param("truncation", "sometimes")))


@pytest.mark.parametrize(("text", "message"), [
    (_param("intra_op_thread_count", "two"), "parameter intra_op_thread_count must be an integer, got 'two'"),
    (_param("inter_op_thread_count", "-1"), "parameter inter_op_thread_count must be at least 0, got '-1'"),
    (_param("drift_window", "0"), "parameter drift_window must be at least 1, got '0'"),
    (_param("drift_monitor", "pca"), "parameter drift_monitor must be auto, classifier, embedding, or true"),
    ("max_batch_size: 4\ndynamic_batching { priority_levels: 2 default_priority_level: 3 }",
     "default_priority_level 3 is above priority_levels 2"),
    ("max_batch_size: 4\ndynamic_batching { priority_levels: 100000000 }",  # one queue each would be allocated
     "priority_levels must be at most 65536, got 100000000"),
    (_param("adaptive_queue_delay", "x\\n\\u001b[2J"), r"got 'x\\n\\x1b\[2J'"),  # escaped for the log
])
def test_bad_values_are_load_errors(text: str, message: str) -> None:
    with pytest.raises(LoadError, match=message):
        read_plan(_config(text))


def test_engine_factory_reads_the_plan() -> None:
    plan = read_plan(_config("instance_group [ { kind: KIND_CPU count: 4 } ]\n" + _param("inter_op_thread_count", "2")))
    options = ort_options(plan)
    assert options.inter_op_threads == 2 and options.intra_op_threads >= 1 and not options.allow_spinning
    assert place(plan).device == "cpu"


def test_a_bad_parameter_fails_only_its_model_with_the_reason(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "simple", ADD_SUB_CONFIG)
    write_model(repo, "typo", ADD_SUB_CONFIG + _param("adaptive_queue_delay", "flase"))
    with running_server(repo) as srv:
        client = InferenceClient(srv.url)
        rows = index_rows(client)
        state, reason = rows[("typo", "1")]
        assert state == "UNAVAILABLE"
        assert "parameter adaptive_queue_delay must be true or false" in reason and "'flase'" in reason
        infer_add_sub(client)  # the other model serves
        assert np.all(infer_add_sub(client, "simple").as_numpy("OUTPUT1") == np.arange(16).reshape(1, 16) - 1)
        client.close()


def test_a_drift_output_the_model_lacks_fails_the_load(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, "simple", ADD_SUB_CONFIG + _param("drift_monitor", "embedding")
                            + _param("drift_output", "OUTPUT9"))
    source = read_model_source(model_dir, False)
    mv = load_model_version(source.name, 1, source.versions[1], source.config,
                            max_batch_size_given=source.max_batch_size_given)
    assert mv.state is ModelState.UNAVAILABLE and mv.scheduler is None and mv.engine is None
    assert "parameter drift_output names 'OUTPUT9', which is not an output of the model" in mv.reason
    ok = write_model(tmp_path, "watched", ADD_SUB_CONFIG + _param("drift_monitor", "on"))
    source = read_model_source(ok, False)
    mv = load_model_version(source.name, 1, source.versions[1], source.config,
                            max_batch_size_given=source.max_batch_size_given)
    try:
        assert mv.ready and mv.plan is not None and mv.plan.drift is not None
        assert mv.scheduler is not None and mv.scheduler.drift is not None
        assert (mv.scheduler.drift.output, mv.scheduler.drift.kind) == ("OUTPUT0", "embedding")
    finally:
        mv.stop(0)
