"""Unit tests in plain CPython: `PYTHONPATH=../../sdk-python python -m unittest`."""

import unittest

from app import PortAllowlist
from defender_plugin import Config, ListeningPort, PluginError, Sample, Severity, Verdict


class PortAllowlistTest(unittest.TestCase):
    def test_rogue_ftp_raises_an_alert(self):
        plugin = PortAllowlist(Config({"tcp": "22, 443"}))
        sample = Sample(listening_tcp_ports=[ListeningPort(21), ListeningPort(22)])
        self.assertEqual(plugin.process(sample), Verdict.KEEP)
        self.assertEqual(len(sample.raised), 1)
        alert = sample.raised[0]
        self.assertEqual(alert.name, "port-not-allowed")
        self.assertEqual(alert.severity, Severity.HIGH)
        self.assertEqual(alert.attributes["port"], "21")
        self.assertEqual(alert.attributes["interface"], "*")

    def test_ephemeral_ports_are_dropped_before_checking(self):
        plugin = PortAllowlist(Config({"tcp": "22", "dropEphemeralFrom": "32768"}))
        sample = Sample(
            listening_tcp_ports=[ListeningPort(22), ListeningPort(40000)],
            listening_udp_ports=[ListeningPort(50000)],
        )
        plugin.process(sample)
        self.assertEqual(sample.listening_tcp_ports, [ListeningPort(22)])
        self.assertEqual(sample.listening_udp_ports, [])
        self.assertEqual(sample.raised, [])

    def test_bad_config_names_the_key(self):
        with self.assertRaises(PluginError) as e:
            PortAllowlist(Config({"tcp": "22,ssh"}))
        self.assertEqual(str(e.exception), 'config key tcp: "ssh" is not a port (1..65535)')
        with self.assertRaises(PluginError) as e:
            PortAllowlist(Config({"dropEphemeralFrom": "lots"}))
        self.assertTrue(str(e.exception).startswith("config key dropEphemeralFrom: 'lots'"))


if __name__ == "__main__":
    unittest.main()
