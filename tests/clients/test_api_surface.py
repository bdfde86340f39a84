"""The public surface of `clients`, pinned: a change here is a change to the API users import."""

from __future__ import annotations

from tensorgate import clients


def test_public_api() -> None:
    assert clients.__all__ == [
        "DATATYPES",
        "AsyncInferenceClient",
        "CodecError",
        "InferInput",
        "InferRequestedOutput",
        "InferResult",
        "InferenceClient",
        "InferenceServerError",
        "config_dtype_to_datatype",
        "contents_to_numpy",
        "datatype_to_config_dtype",
        "datatype_to_numpy",
        "deserialize_bf16",
        "deserialize_bytes_tensor",
        "element_count",
        "element_size",
        "numpy_to_contents",
        "numpy_to_datatype",
        "numpy_to_raw",
        "raw_to_numpy",
        "serialize_bf16",
        "serialize_bytes_tensor",
    ]


def test_every_name_in_all_exists() -> None:
    for name in clients.__all__:
        assert hasattr(clients, name), name


def test_sync_and_async_clients_offer_the_same_calls() -> None:
    def public(cls: type) -> set[str]:
        return {name for name in vars(cls) if not name.startswith("_")}

    sync_only = {"start_stream", "async_stream_infer", "stop_stream"}  # tritonclient's callback streaming
    assert public(clients.InferenceClient) - sync_only == public(clients.AsyncInferenceClient)
