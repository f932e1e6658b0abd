"""Raises an alert for every listening port that is not on the allowlist
(the rogue FTP server on port 21), and optionally keeps ephemeral ports out
of the report so short-lived listeners do not flap Device Defender's
listening-port behaviors. The Python twin of plugins/examples/port-allowlist:
same configuration, same outcome."""

from defender_plugin import Config, Plugin, PluginError, Sample, Severity, Verdict, export


def ports(config: Config, key: str) -> set:
    result = set()
    for item in config.list(key):
        if not item.isdigit() or not 0 < int(item) <= 65535:
            raise PluginError(f'config key {key}: "{item}" is not a port (1..65535)')
        result.add(int(item))
    return result


class PortAllowlist(Plugin):
    def __init__(self, config: Config):
        name = config.get("severity", "high")
        try:
            self.severity = Severity(name)
        except ValueError:
            raise PluginError(f'config key severity: unknown severity "{name}"') from None
        self.tcp = ports(config, "tcp")
        self.udp = ports(config, "udp")
        # Ports from here up are dropped from the report, when set.
        self.drop_from = config.parse("dropEphemeralFrom", int)

    def process(self, sample: Sample) -> Verdict:
        if self.drop_from is not None:
            sample.listening_tcp_ports = [p for p in sample.listening_tcp_ports if p.port < self.drop_from]
            sample.listening_udp_ports = [p for p in sample.listening_udp_ports if p.port < self.drop_from]
        rogue = [("tcp", p) for p in sample.listening_tcp_ports if p.port not in self.tcp]
        rogue += [("udp", p) for p in sample.listening_udp_ports if p.port not in self.udp]
        for protocol, port in rogue:
            interface = port.interface or "*"
            sample.raise_alert(
                "port-not-allowed",
                self.severity,
                f"{protocol} port {port.port} listens on {interface} but is not on the allowlist",
                protocol=protocol,
                port=port.port,
                interface=interface,
            )
        return Verdict.KEEP


# componentize-py exports the class bound to this name.
Processor = export(PortAllowlist)
