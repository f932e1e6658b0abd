"""The WebAssembly side: converts between the bindings componentize-py
generates from ``wit/`` and the plain types, and keeps the plugin object.

Nothing here imports the generated bindings at module level, so the package
imports (and plugins unit-test) in plain CPython.
"""

import traceback
from typing import Any, List, Optional, Tuple, Type

from . import log
from ._types import (
    Alert,
    Config,
    Connection,
    IpList,
    ListeningPort,
    MetricValue,
    NetworkStats,
    NewAlert,
    Number,
    NumberList,
    Plugin,
    PluginError,
    Sample,
    Severity,
    StringList,
    Verdict,
)

# The plugin object of this instance. Module state rather than an attribute
# of the exported class: componentize-py may construct that class per call.
_plugin: Optional[Plugin] = None


def export(plugin_class: Type[Plugin]) -> type:
    """Returns the class componentize-py exports as the ``processor``
    interface. Bind it to the name ``Processor`` in the app module::

        Processor = export(MyPlugin)
    """

    class Processor:
        def init(self, config: List[Tuple[str, str]]) -> None:
            global _plugin
            _plugin = None
            _plugin = _guarded("init", lambda: plugin_class(Config(config)))

        def process(self, sample: Any) -> Any:
            plugin = _plugin
            if plugin is None:
                _fail("process called before init")
            plain = from_wit(sample)
            verdict = _guarded("process", lambda: plugin.process(plain))
            return to_wit_output(plain, verdict)

    Processor.__name__ = Processor.__qualname__ = "Processor"
    return Processor


def _fail(message: str) -> None:
    """Returns `message` as the call's error (the `result`'s err case)."""
    from componentize_py_types import Err  # type: ignore[import-not-found]

    raise Err(message)


def _guarded(what: str, call: Any) -> Any:
    """Runs plugin code: a PluginError becomes the call's error; any other
    exception is logged with its traceback (the host discards standard
    error) and raised on, which traps, and the host restarts the plugin."""
    try:
        return call()
    except PluginError as e:
        _fail(str(e))
    except Exception as e:
        frame = traceback.extract_tb(e.__traceback__)[-1]
        log.error(
            f"plugin raised {type(e).__name__} in {what}: {e} "
            f"({frame.filename}:{frame.lineno} in {frame.name})"
        )
        log.error("".join(traceback.format_exception(e)))
        raise


_SEVERITIES = ["INFO", "LOW", "MEDIUM", "HIGH", "CRITICAL"]


def from_wit(s: Any) -> Sample:
    """The plain sample for the generated `types.Sample`."""
    from wit_world.imports import types as wit  # type: ignore[import-not-found]

    def metric(v: Any) -> MetricValue:
        if isinstance(v, wit.MetricValue_Number):
            return Number(v.value)
        if isinstance(v, wit.MetricValue_NumberList):
            return NumberList(list(v.value))
        if isinstance(v, wit.MetricValue_StringList):
            return StringList(list(v.value))
        return IpList(list(v.value))

    def ports(wire: Any) -> List[ListeningPort]:
        return [ListeningPort(p.port, p.interface) for p in wire]

    def connections(wire: Any) -> List[Connection]:
        return [Connection(c.remote_addr, c.local_port, c.local_interface) for c in wire]

    stats = s.network_stats
    sample = Sample(
        thing=s.thing,
        timestamp_ms=s.timestamp_ms,
        network_stats=None
        if stats is None
        else NetworkStats(stats.bytes_in, stats.bytes_out, stats.packets_in, stats.packets_out),
        custom_metrics={m.name: metric(m.value) for m in s.custom_metrics},
        annotations=dict(s.annotations),
        alerts=[
            Alert(a.source, a.name, Severity[a.severity.name], a.message, dict(a.attributes))
            for a in s.alerts
        ],
    )
    # The socket lists stay in their wire form until the plugin reads them
    # (Sample.__getattr__); one it never reads goes back as it came, which
    # spares converting a thousand connections twice per call.
    for name, wire, convert in (
        ("listening_tcp_ports", s.listening_tcp_ports, ports),
        ("listening_udp_ports", s.listening_udp_ports, ports),
        ("established_connections", s.established_connections, connections),
    ):
        del sample.__dict__[name]
        sample.__dict__.setdefault("_wire", {})[name] = (wire, convert)
    return sample


def to_wit_output(s: Sample, verdict: Any) -> Any:
    """The generated `types.Output` for a plain sample and verdict."""
    from wit_world.imports import types as wit  # type: ignore[import-not-found]

    if not isinstance(verdict, Verdict):
        _fail(f"process returned {verdict!r}, not a Verdict")

    def severity(v: Severity) -> Any:
        return wit.Severity[v.name]

    alerts = [
        wit.NewAlert(a.name, severity(a.severity), a.message, sorted(a.attributes.items()))
        for a in s.raised
    ]
    if verdict is Verdict.DROP_REPORT:
        return wit.Output(wit.Verdict_DropReport(), alerts)

    def metric(v: MetricValue) -> Any:
        if isinstance(v, Number):
            return wit.MetricValue_Number(float(v.value))
        if isinstance(v, NumberList):
            return wit.MetricValue_NumberList([float(x) for x in v.value])
        if isinstance(v, StringList):
            return wit.MetricValue_StringList(list(v.value))
        if isinstance(v, IpList):
            return wit.MetricValue_IpList(list(v.value))
        _fail(f"custom metric value {v!r} is not Number, NumberList, StringList or IpList")

    # A list the plugin neither read nor assigned is still in the form it
    # came in.
    untouched = {k: v for k, v in s.__dict__.get("_wire", {}).items() if k not in s.__dict__}

    def ports(name: str) -> Any:
        if name in untouched:
            return untouched[name][0]
        return [wit.ListeningPort(p.port, p.interface) for p in getattr(s, name)]

    if "established_connections" in untouched:
        connections = untouched["established_connections"][0]
    else:
        connections = [
            wit.Connection(c.remote_addr, c.local_port, c.local_interface)
            for c in s.established_connections
        ]
    stats = s.network_stats
    out = wit.Sample(
        thing=s.thing,
        timestamp_ms=s.timestamp_ms,
        listening_tcp_ports=ports("listening_tcp_ports"),
        listening_udp_ports=ports("listening_udp_ports"),
        established_connections=connections,
        network_stats=None
        if stats is None
        else wit.NetworkStats(stats.bytes_in, stats.bytes_out, stats.packets_in, stats.packets_out),
        custom_metrics=[wit.CustomMetric(k, metric(v)) for k, v in s.custom_metrics.items()],
        annotations=sorted(s.annotations.items()),
        alerts=[
            wit.Alert(a.source, a.name, severity(a.severity), a.message, sorted(a.attributes.items()))
            for a in s.alerts
        ],
    )
    return wit.Output(wit.Verdict_Keep(out), alerts)
