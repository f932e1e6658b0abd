"""The sample and its parts as plain Python values (no WebAssembly here)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple, TypeVar, Union

T = TypeVar("T")


class PluginError(Exception):
    """An expected failure: the host logs the message and applies the
    plugin's failure policy; the instance is kept."""


class Severity(enum.Enum):
    """How bad an alert is."""

    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class Verdict(enum.Enum):
    """What happens to the report after :meth:`Plugin.process`."""

    #: Continue with the (possibly changed) sample.
    KEEP = "keep"
    #: Send no report for this sample.
    DROP_REPORT = "drop-report"


@dataclass
class ListeningPort:
    """A port something listens on; ``interface`` is None for a wildcard bind."""

    port: int
    interface: Optional[str] = None


@dataclass
class Connection:
    """An established TCP connection."""

    #: The peer as ``ip:port``; IPv6 as ``[addr]:port``.
    remote_addr: str
    local_port: int
    local_interface: Optional[str] = None

    @property
    def remote_ip(self) -> str:
        """The peer's address without the port."""
        host = self.remote_addr.rsplit(":", 1)[0]
        return host[1:-1] if host.startswith("[") else host


@dataclass
class NetworkStats:
    """Interface traffic since the previous sample."""

    bytes_in: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    packets_out: int = 0


@dataclass
class Number:
    """A number metric (at most 15 significant digits)."""

    value: float


@dataclass
class NumberList:
    value: List[float]


@dataclass
class StringList:
    """Strings of ``a-z A-Z 0-9 : _ - / .``."""

    value: List[str]


@dataclass
class IpList:
    """IPv4 or IPv6 addresses."""

    value: List[str]


#: One of the four Device Defender custom metric types.
MetricValue = Union[Number, NumberList, StringList, IpList]


@dataclass
class Alert:
    """An alert already raised for the sample (read-only)."""

    #: A plugin's name, or ``detect/<profile>`` for local detection.
    source: str
    name: str
    severity: Severity
    message: str
    attributes: Dict[str, str] = field(default_factory=dict)


@dataclass
class NewAlert:
    """An alert this plugin raises; the host records the plugin as its source."""

    name: str
    severity: Severity
    message: str
    attributes: Dict[str, str] = field(default_factory=dict)

    def with_attr(self, key: str, value: object) -> "NewAlert":
        """Adds an attribute (the value as text); returns the alert for chaining."""
        self.attributes[key] = str(value)
        return self


@dataclass
class Sample:
    """One observation of the device, as the host hands it to the plugin."""

    #: Read-only: the AWS IoT thing name.
    thing: str = ""
    #: Read-only: collection time, milliseconds since the Unix epoch.
    timestamp_ms: int = 0
    #: Remove entries to keep them out of the report.
    listening_tcp_ports: List[ListeningPort] = field(default_factory=list)
    listening_udp_ports: List[ListeningPort] = field(default_factory=list)
    established_connections: List[Connection] = field(default_factory=list)
    network_stats: Optional[NetworkStats] = None
    #: Custom metrics by name: 1 to 128 characters from ``a-z A-Z 0-9 : _ -``,
    #: not starting with ``aws:``.
    custom_metrics: Dict[str, MetricValue] = field(default_factory=dict)
    #: Enrichment for SIEM events (owner, site...); never in the report.
    annotations: Dict[str, str] = field(default_factory=dict)
    #: Read-only: alerts already raised (local detection, earlier plugins).
    alerts: List[Alert] = field(default_factory=list)
    #: Alerts this plugin raised during this call; see :meth:`raise_alert`.
    raised: List[NewAlert] = field(default_factory=list)

    def __getattr__(self, name: str) -> object:
        # Called only for an attribute the instance lacks: a list the
        # WebAssembly glue (_export.from_wit) left in its wire form, made
        # plain on first use, so a plugin pays only for the lists it reads.
        lazy = self.__dict__.get("_wire")
        if lazy is not None and name in lazy:
            wire, convert = lazy.pop(name)
            value = convert(wire)
            setattr(self, name, value)
            return value
        raise AttributeError(f"'Sample' object has no attribute '{name}'")

    def raise_alert(
        self, name: str, severity: Severity, message: str, **attributes: object
    ) -> NewAlert:
        """Raises an alert; keyword arguments become attributes (as text).
        Returns the alert, so more attributes can be added with ``with_attr``."""
        alert = NewAlert(name, severity, message, {k: str(v) for k, v in attributes.items()})
        self.raised.append(alert)
        return alert


class Config:
    """The plugin's configuration: a string map, as given in the host's
    ``plugins.settings.<name>.config``."""

    def __init__(self, values: Union[Dict[str, str], Iterable[Tuple[str, str]], None] = None):
        self._values: Dict[str, str] = dict(values or {})

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """The value of ``key``, or ``default`` when unset."""
        return self._values.get(key, default)

    def parse(self, key: str, convert: Callable[[str], T], default: Optional[T] = None) -> Optional[T]:
        """The value of ``key`` converted (``int``, ``float``...); ``default``
        when unset, and a :class:`PluginError` naming the key when it does not
        convert."""
        value = self._values.get(key)
        if value is None:
            return default
        try:
            return convert(value.strip())
        except (TypeError, ValueError) as e:
            raise PluginError(f"config key {key}: {value!r}: {e}") from None

    def list(self, key: str) -> List[str]:
        """The comma-separated items of ``key``, trimmed, empty ones skipped."""
        return [s.strip() for s in self._values.get(key, "").split(",") if s.strip()]

    def items(self) -> Iterator[Tuple[str, str]]:
        """Every key and value, sorted by key."""
        return iter(sorted(self._values.items()))

    def __repr__(self) -> str:
        return f"Config({self._values!r})"


class Plugin:
    """A plugin: constructed by ``init`` from its configuration, then called
    once per sample. The object lives between calls (until a failure or a
    reload), so it may keep state such as previous readings.

    Subclasses implement ``__init__(self, config: Config)`` (raise
    :class:`PluginError` to refuse the configuration) and :meth:`process`.
    """

    def __init__(self, config: Config):
        pass

    def process(self, sample: Sample) -> Verdict:
        """Looks at, and may change, the sample: drop ports or connections, add
        annotations and custom metrics, raise alerts with
        :meth:`Sample.raise_alert`."""
        raise NotImplementedError("a plugin must implement process")
