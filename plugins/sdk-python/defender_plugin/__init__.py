"""Write defender-edge WebAssembly plugins in plain Python.

Subclass :class:`Plugin`, then export it once from your app module::

    from defender_plugin import Config, Plugin, Sample, Severity, Verdict, export

    class NoTelnet(Plugin):
        def __init__(self, config: Config):
            pass

        def process(self, sample: Sample) -> Verdict:
            if any(p.port == 23 for p in sample.listening_tcp_ports):
                sample.raise_alert("telnet-listening", Severity.HIGH, "telnet listens on port 23")
            return Verdict.KEEP

    Processor = export(NoTelnet)

The types are plain Python values, so plugin logic is unit-tested with plain
CPython (``python -m unittest``); the WebAssembly plumbing (the bindings
componentize-py generates from ``wit/``) is only imported inside the
component. The life cycle is the Rust SDK's: the host calls ``init`` once per
instance (your class is constructed with the configuration) and ``process``
for every sample; the instance lives until a failure or a reload.

Errors: raise :class:`PluginError` for an expected failure (bad
configuration, unusable input): the host logs the message and applies the
plugin's failure policy, keeping the instance. Any other exception is a bug:
its traceback is logged through the host, then the plugin traps and the host
restarts it, as it does for a Rust panic.
"""

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
from ._export import export
from . import log

__all__ = [
    "Alert",
    "Config",
    "Connection",
    "IpList",
    "ListeningPort",
    "MetricValue",
    "NetworkStats",
    "NewAlert",
    "Number",
    "NumberList",
    "Plugin",
    "PluginError",
    "Sample",
    "Severity",
    "StringList",
    "Verdict",
    "export",
    "log",
]
