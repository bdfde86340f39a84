"""A model version's config, read once into a frozen, typed plan (Triton's backend_model.cc does the same).

``read_plan`` reads every value the server acts on: the batcher and its queue
policies, the instance groups, the engine options (precision, gate, TensorRT,
ONNX Runtime threads), drift monitoring, the response cache and the tokenizer's
options. Every ``parameters`` string is read here, through ``Parameters``
(parameters.py: one spelling of true), and checked before any engine is built:
a bad value fails the load with the key and the value named. The scheduler, the
engine factory and the drift monitor take the plan, never the config.

The plan is read from the config as given; ``ModelPlan.completed`` then takes
the structural fields config completion fills in (max_batch_size, instance
groups, ``dynamic_batching``) and the placement decided at load. Plans are
frozen and picklable, so another process (an engine core) can receive one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tensorgate.clients.pb import model_config_pb2 as mc
from tensorgate.engines import EngineLoadError
from tensorgate.engines.tokenizer_engine import TOKENIZER_BACKEND, TokenizerOptions

from .autocomplete import DEFAULT_CPU_INSTANCES
from .engine_options import EngineOptions, engine_options, tensorrt_parameters
from .errors import LoadError
from .parameters import ParameterError, Parameters, quoted

__all__ = [
    "DEFAULT_CPU_INSTANCES",
    "BatchingPlan",
    "DriftPlan",
    "EnginePlan",
    "InstanceGroupPlan",
    "InstancePlan",
    "ModelPlan",
    "Placement",
    "QueuePolicy",
    "read_plan",
]

DRIFT_KINDS = ("auto", "classifier", "embedding")
_MAX_LEVELS = 1 << 16  # one deque per level is allocated at load: bound what a config can ask for


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """One priority level's queue policy (Triton's ModelQueuePolicy)."""

    max_size: int = 0  # 0: unbounded
    default_timeout_us: int = 0  # 0: none
    delay_on_timeout: bool = False  # timeout_action DELAY (else REJECT)
    allow_override: bool = False  # a request's own timeout may shorten the default

    @classmethod
    def of(cls, policy: mc.ModelQueuePolicy) -> QueuePolicy:
        return cls(int(policy.max_queue_size), int(policy.default_timeout_microseconds),
                   policy.timeout_action == mc.ModelQueuePolicy.DELAY, bool(policy.allow_timeout_override))


@dataclass(frozen=True, slots=True)
class BatchingPlan:
    """The dynamic batcher's settings.

    ``scheduled``: the config has ``dynamic_batching`` (priorities and ordering apply even when the model
    does not batch); ``dynamic``: requests merge into batches (``dynamic_batching`` and max_batch_size > 0).
    ``policies[level]`` is each level's queue policy; index 0 is the one queue without priority levels
    and unused with them (level 1 is the highest).
    """

    scheduled: bool = False
    dynamic: bool = False
    max_rows: int = 0
    preferred_sizes: tuple[int, ...] = ()  # as configured (TensorRT profiles read them too)
    queue_delay_us: int = 0
    adaptive_delay: bool = True  # tensorgate: skip the delay while waiting does not grow batches
    preserve_ordering: bool = False
    priority_levels: int = 0
    default_level: int = 0
    policies: tuple[QueuePolicy, ...] = (QueuePolicy(),)

    @property
    def preferred(self) -> tuple[int, ...]:
        """The preferred sizes the batcher can form: sorted, within max_batch_size."""
        return tuple(sorted({p for p in self.preferred_sizes if 0 < p <= self.max_rows}))

    @property
    def delay_ns(self) -> int:
        return self.queue_delay_us * 1000 if self.dynamic else 0


@dataclass(frozen=True, slots=True)
class InstanceGroupPlan:
    name: str
    kind: int  # mc.ModelInstanceGroup.Kind
    count: int  # 0: the kind's default (before completion)
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class InstancePlan:
    groups: tuple[InstanceGroupPlan, ...] = ()

    @property
    def count(self) -> int:
        """Instances the groups ask for (no groups, or no count: Triton's ORT default of 2 per group)."""
        if not self.groups:
            return DEFAULT_CPU_INSTANCES
        return sum(g.count if g.count > 0 else DEFAULT_CPU_INSTANCES for g in self.groups)

    def kinds(self) -> set[int]:
        return {g.kind for g in self.groups}


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a model runs: "cpu", or "gpu" with one GPU index per instance (decided at load)."""

    device: str
    instance_gpus: tuple[int, ...] = ()
    note: str = ""


@dataclass(frozen=True, slots=True)
class EnginePlan:
    """What the engine factory needs: precision and TensorRT options, and ONNX Runtime's session keys."""

    options: EngineOptions = field(default_factory=EngineOptions)
    intra_op_threads: int = 0  # 0: fit the host (engine_factory.ort_options)
    inter_op_threads: int = 1
    graph_level: int = 0  # optimization.graph.level
    allow_spinning: bool = False


@dataclass(frozen=True, slots=True)
class DriftPlan:
    kind: str  # "auto" (classifier when the output has labels), "classifier" or "embedding"
    output: str = ""  # "": the first output
    window: int = 5000  # rows per PSI window


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """Everything the server acts on for one model version."""

    model: str
    version: int = 0
    max_batch_size: int = 0
    batching: BatchingPlan = BatchingPlan()
    instances: InstancePlan = InstancePlan()
    engine: EnginePlan = field(default_factory=EnginePlan)
    drift: DriftPlan | None = None
    response_cache: bool = False
    tokenizer: TokenizerOptions | None = None  # backend "tokenizer"
    placement: Placement = Placement("cpu")

    def completed(self, config: mc.ModelConfig, placement: Placement | None = None) -> ModelPlan:
        """This plan with the effective config's structural fields (and the placement made at load)."""
        return replace(
            self, max_batch_size=int(config.max_batch_size),
            batching=_batching(config, self.batching.adaptive_delay), instances=_instances(config),
            response_cache=bool(config.response_cache.enable), placement=placement or self.placement,
        )


def read_plan(config: mc.ModelConfig, version: int = 0) -> ModelPlan:
    """Read a model's config into its plan.

    Raises:
        LoadError: a value cannot be used (ParameterError for a ``parameters`` value); the message names it.
    """
    params = Parameters.of(config)
    return ModelPlan(
        model=config.name,
        version=version,
        max_batch_size=int(config.max_batch_size),
        batching=_batching(config, params.boolean("adaptive_queue_delay", True)),
        instances=_instances(config),
        engine=EnginePlan(
            options=engine_options(config.name, params, tensorrt_parameters(config)),
            intra_op_threads=params.integer("intra_op_thread_count", 0, minimum=0),
            inter_op_threads=params.integer("inter_op_thread_count", 0, minimum=0) or 1,
            graph_level=int(config.optimization.graph.level) if config.HasField("optimization") else 0,
            allow_spinning=params.boolean("allow_spinning", False),
        ),
        drift=_drift(params),
        response_cache=bool(config.response_cache.enable),
        tokenizer=_tokenizer(config, params) if config.backend == TOKENIZER_BACKEND else None,
    )


def _batching(config: mc.ModelConfig, adaptive: bool) -> BatchingPlan:
    if config.WhichOneof("scheduling_choice") != "dynamic_batching":
        return BatchingPlan(adaptive_delay=adaptive)
    db = config.dynamic_batching
    levels = int(db.priority_levels)
    if levels > _MAX_LEVELS:
        raise LoadError(f"dynamic_batching priority_levels must be at most {_MAX_LEVELS}, got {levels}")
    default_level = int(db.default_priority_level) if levels else 0
    if default_level > levels:
        # Triton refuses this too; the batcher would have no queue for requests at the default level
        raise LoadError(f"dynamic_batching default_priority_level {default_level} is above priority_levels "
                        f"{levels}")
    default = QueuePolicy.of(db.default_queue_policy) if db.HasField("default_queue_policy") else QueuePolicy()
    policies = tuple(QueuePolicy.of(db.priority_queue_policy[i]) if i in db.priority_queue_policy else default
                     for i in range(levels + 1))
    dynamic = config.max_batch_size > 0
    return BatchingPlan(
        scheduled=True, dynamic=dynamic, max_rows=int(config.max_batch_size) if dynamic else 0,
        preferred_sizes=tuple(int(p) for p in db.preferred_batch_size),
        queue_delay_us=int(db.max_queue_delay_microseconds), adaptive_delay=adaptive,
        preserve_ordering=bool(db.preserve_ordering), priority_levels=levels, default_level=default_level,
        policies=policies,
    )


def _instances(config: mc.ModelConfig) -> InstancePlan:
    return InstancePlan(tuple(
        InstanceGroupPlan(g.name or f"{config.name}_{i}", int(g.kind), int(g.count), tuple(int(x) for x in g.gpus))
        for i, g in enumerate(config.instance_group)
    ))


def _drift(params: Parameters) -> DriftPlan | None:
    window = params.integer("drift_window", 5000, minimum=1)  # checked even while the monitor is off
    raw = params.text("drift_monitor")
    if not raw:
        return None
    word = raw.lower()
    if word not in DRIFT_KINDS:
        try:
            on = params.boolean("drift_monitor", False)
        except ParameterError:
            raise ParameterError(f"parameter drift_monitor must be auto, classifier, embedding, or true or false "
                                 f"(or 1/0, yes/no, on/off), got '{quoted(raw)}'") from None
        if not on:
            return None
        word = "auto"
    return DriftPlan(word, params.text("drift_output"), window)


def _tokenizer(config: mc.ModelConfig, params: Parameters) -> TokenizerOptions:
    """The tokenizer's settings from ``parameters`` and the config's tensor names."""
    defaults = TokenizerOptions()
    bytes_inputs = [t.name for t in config.input if t.data_type == mc.TYPE_STRING]
    int_outputs = [t.name for t in config.output]
    if len(config.input) > 1 or (config.input and not bytes_inputs):
        raise LoadError("a tokenizer model has exactly one input, of data_type TYPE_STRING")
    if config.output and len(int_outputs) != 2:
        raise LoadError("a tokenizer model has two outputs: token ids, then the attention mask")
    try:
        return TokenizerOptions(
            input_name=bytes_inputs[0] if bytes_inputs else defaults.input_name,
            ids_name=int_outputs[0] if int_outputs else defaults.ids_name,
            mask_name=int_outputs[1] if int_outputs else defaults.mask_name,
            padding=params.text("padding", defaults.padding),
            max_length=params.integer("max_length", defaults.max_length),
            truncation=params.boolean("truncation", defaults.truncation),
            add_special_tokens=params.boolean("add_special_tokens", defaults.add_special_tokens),
            max_text_bytes=params.integer("max_text_bytes", defaults.max_text_bytes),
        )
    except EngineLoadError as exc:  # the options' own range checks
        raise LoadError(str(exc)) from exc
