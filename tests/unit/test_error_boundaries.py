"""No third-party exception escapes a component unmapped (in the spirit of httpx's
test that every httpcore exception has a mapping).

For each library unsflow talks through, every exception class the library
defines is raised, one by one, from the library call a component makes at its
boundary; what comes out of the component must be an
:class:`~unsflow.errors.UnsflowError` (``raise OurError(...) from exc``).
A library release that adds an exception class, or a boundary that forgets one,
fails here by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

from unsflow.components import Context
from unsflow.errors import UnsflowError
from unsflow.message import Message


def exceptions_of(*modules: ModuleType) -> list[type[BaseException]]:
    """Every exception class defined by the library of ``modules`` (its own, not builtins;
    not its warnings, which are not raised unless warnings are made errors)."""
    root = modules[0].__name__.split(".")[0]
    found: dict[str, type[BaseException]] = {}
    for module in modules:
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and not issubclass(cls, Warning) \
                    and cls.__module__.split(".")[0] == root:
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[k] for k in sorted(found)]


def instance(cls: type[BaseException]) -> BaseException:
    """An instance of ``cls``, whatever its constructor wants."""
    import httpx

    request = httpx.Request("POST", "http://127.0.0.1:9/x")
    by_name: dict[str, Any] = {
        "code": 0x87, "request": request, "response": httpx.Response(503, request=request),
        "error_response": {"Error": {"Code": "ResourceNotFoundException", "Message": "x"}},
        "operation_name": "GetSecretValue", "kafka_error": None, "message": "boom",
        "last_response": {},
    }
    try:
        params = [p for p in inspect.signature(cls.__init__).parameters.values()
                  if p.name != "self" and p.default is inspect.Parameter.empty
                  and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    except (TypeError, ValueError):  # a C type: a message is enough
        params = []
    args = [by_name.get(p.name, "boom") for p in params if p.kind != p.KEYWORD_ONLY]
    kwargs = {p.name: by_name.get(p.name, "boom") for p in params if p.kind == p.KEYWORD_ONLY}
    fmt = getattr(cls, "fmt", None)
    if isinstance(fmt, str):  # botocore: the message is formatted from keyword arguments
        import string

        names = [f for _, f, _, _ in string.Formatter().parse(fmt) if f]
        every = {p.name for p in params} | set(names)
        return cls(**{n: by_name.get(n, "x") for n in every})
    if not params:
        try:
            return cls("boom")
        except TypeError:
            return cls()
    return cls(*args, **kwargs)


def ids(classes: list[type[BaseException]]) -> list[str]:
    return [c.__qualname__ for c in classes]


def raising(exc: BaseException) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return fail


def async_raising(exc: BaseException) -> Callable[..., Any]:
    async def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return fail


def assert_mapped(error: BaseException, upstream: BaseException) -> None:
    assert isinstance(error, UnsflowError), (
        f"{type(upstream).__module__}.{type(upstream).__qualname__} escaped as "
        f"{type(error).__name__}: {error}")
    assert not isinstance(error, type(upstream)) or isinstance(upstream, UnsflowError)


# ------------------------------------------------------------------ obstore


def _obstore_exceptions() -> list[type[BaseException]]:
    import obstore.exceptions

    return exceptions_of(obstore.exceptions)


@pytest.mark.parametrize("cls", _obstore_exceptions(), ids=ids(_obstore_exceptions()))
def test_obstore_errors_are_mapped_by_the_lake_writer(monkeypatch, cls) -> None:
    import obstore

    from unsflow.lake import ObjectWriter, build_store

    store, root = build_store(store_url="memory:///")
    writer = ObjectWriter(store, root, chunk_size=5 * 1024 * 1024, component_id="lake")
    upstream = instance(cls)
    monkeypatch.setattr(obstore, "put", raising(upstream))
    with pytest.raises(Exception) as info:
        writer.put("a/b.parquet", b"x")
    assert_mapped(info.value, upstream)


@pytest.mark.parametrize("cls", _obstore_exceptions(), ids=ids(_obstore_exceptions()))
@pytest.mark.parametrize("call", ["put", "get", "list"])
def test_obstore_errors_are_mapped_by_the_model_store(monkeypatch, cls, call) -> None:
    import obstore

    from unsflow.ml.store import ModelStore

    store = ModelStore("memory:///models")
    upstream = instance(cls)
    monkeypatch.setattr(obstore, call, raising(upstream))
    with pytest.raises(Exception) as info:
        store.save("m", b"onnx", {}) if call == "put" else store.read("m", 1)
    assert_mapped(info.value, upstream)


# ------------------------------------------------------------------ httpx


def _httpx_exceptions() -> list[type[BaseException]]:
    import httpx

    return exceptions_of(httpx)


@pytest.mark.parametrize("cls", _httpx_exceptions(), ids=ids(_httpx_exceptions()))
async def test_httpx_errors_are_mapped_by_the_remote_processor(monkeypatch, cls) -> None:
    import httpx

    from unsflow.processors.remote import RemoteProcessor

    cfg = RemoteProcessor.config_class.model_validate(
        {"type": "remote", "base-url": "http://127.0.0.1:9/api", "processor-id": "m",
         "retries": 0})
    proc = RemoteProcessor("edge", cfg, Context(env={}))
    await proc.start()
    upstream = instance(cls)
    monkeypatch.setattr(httpx.AsyncClient, "post", async_raising(upstream))
    try:
        with pytest.raises(Exception) as info:
            await proc.process([Message("a/b", b'{"value": 1.5}')])
    finally:
        await proc.stop()
    assert_mapped(info.value, upstream)


# ------------------------------------------------------------------ gmqtt


def _gmqtt_exceptions() -> list[type[BaseException]]:
    import gmqtt
    import gmqtt.mqtt.handler

    return exceptions_of(gmqtt, gmqtt.mqtt.handler)


@pytest.mark.parametrize("cls", _gmqtt_exceptions(), ids=ids(_gmqtt_exceptions()))
async def test_gmqtt_errors_are_mapped_by_the_mqtt_client_adapter(monkeypatch, cls) -> None:
    import gmqtt

    from unsflow.sources._mqtt_client import ClientSettings, GmqttClient

    class Events:
        def mqtt_connected(self, session_present: bool) -> None: ...
        def mqtt_disconnected(self) -> None: ...
        def mqtt_message(self, *args: Any) -> None: ...

    upstream = instance(cls)
    monkeypatch.setattr(gmqtt.Client, "connect", async_raising(upstream))
    client = GmqttClient(ClientSettings("127.0.0.1", 9), Events(), component_id="uns")
    with pytest.raises(Exception) as info:
        await client.connect()
    assert_mapped(info.value, upstream)


# ------------------------------------------------------------------ paho


def _paho_exceptions() -> list[type[BaseException]]:
    import paho.mqtt.client
    import paho.mqtt.enums
    import paho.mqtt.reasoncodes

    return exceptions_of(paho.mqtt.client, paho.mqtt.enums, paho.mqtt.reasoncodes)


@pytest.mark.parametrize("cls", _paho_exceptions(), ids=ids(_paho_exceptions()))
@pytest.mark.parametrize("user", ["publisher", "collector", "end_session"])
def test_paho_errors_are_mapped_by_the_publisher_and_the_testing_helpers(monkeypatch, cls,
                                                                        user) -> None:
    import paho.mqtt.client

    from unsflow._paho import Publisher
    from unsflow.testing import Collector, end_session

    upstream = instance(cls)
    monkeypatch.setattr(paho.mqtt.client.Client, "connect", raising(upstream))
    with pytest.raises(Exception) as info:
        if user == "publisher":
            Publisher("127.0.0.1", 9).open(1)
        elif user == "collector":
            Collector("127.0.0.1", 9, "a/#", connect_timeout=1).start()
        else:
            end_session("127.0.0.1", 9, "someone", timeout=1)
    assert_mapped(info.value, upstream)


# ------------------------------------------------------------------ botocore


def _botocore_exceptions() -> list[type[BaseException]]:
    import botocore.exceptions

    return exceptions_of(botocore.exceptions)


@pytest.fixture(scope="module")
def secretsmanager() -> Any:
    """One real boto3 client (making one per case costs about a second)."""
    import boto3

    return boto3.session.Session(region_name="us-east-1", aws_access_key_id="k",
                                 aws_secret_access_key="s").client("secretsmanager")


@pytest.mark.parametrize("cls", _botocore_exceptions(), ids=ids(_botocore_exceptions()))
async def test_botocore_errors_are_mapped_by_the_secrets_manager_provider(monkeypatch, cls,
                                                                         secretsmanager) -> None:
    import boto3
    import botocore.client

    from unsflow.config.models import SecretRef
    from unsflow.secrets.aws import AwsSecretsManagerProvider

    class Session:
        def __init__(self, **kwargs: Any) -> None: ...
        def client(self, *args: Any, **kwargs: Any) -> Any:
            return secretsmanager

    upstream = instance(cls)
    monkeypatch.setattr(boto3.session, "Session", Session)
    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", raising(upstream))
    provider = AwsSecretsManagerProvider({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"})
    ref = SecretRef.model_validate({"secret-name": "mqtt", "secret-region": "us-east-1"})
    with pytest.raises(Exception) as info:
        await provider.resolve(ref)
    assert_mapped(info.value, upstream)


# ------------------------------------------------------------------ confluent-kafka


def _kafka_exceptions() -> list[type[BaseException]]:
    import confluent_kafka
    import confluent_kafka.error

    return exceptions_of(confluent_kafka, confluent_kafka.error)


def _kafka_components() -> Iterator[tuple[str, Any]]:
    from unsflow.sources.kafka import KafkaSource
    from unsflow.targets.kafka import KafkaTarget

    yield "Producer", lambda: KafkaTarget("bridge", KafkaTarget.config_class.model_validate(
        {"type": "kafka", "bootstrap-servers": "127.0.0.1:9"}), Context(env={}))
    yield "Consumer", lambda: KafkaSource("plant", KafkaSource.config_class.model_validate(
        {"type": "kafka", "bootstrap-servers": "127.0.0.1:9", "group-id": "g",
         "topics": ["t"], "target": "lake"}), Context(env={}))


@pytest.mark.parametrize("cls", _kafka_exceptions(), ids=ids(_kafka_exceptions()))
@pytest.mark.parametrize("client", ["Producer", "Consumer"])
async def test_confluent_kafka_errors_are_mapped_when_a_client_is_made(monkeypatch, cls,
                                                                      client) -> None:
    import confluent_kafka

    upstream = instance(cls)
    monkeypatch.setattr(confluent_kafka, client, raising(upstream))
    component = dict(_kafka_components())[client]()
    with pytest.raises(Exception) as info:
        await component.start()
    assert_mapped(info.value, upstream)
