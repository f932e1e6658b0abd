"""The SDK's plain types, in plain CPython: `python -m unittest discover -s tests`."""

import unittest

from defender_plugin import (
    Config,
    Connection,
    Plugin,
    PluginError,
    Sample,
    Severity,
    Verdict,
    export,
)


class ConfigTest(unittest.TestCase):
    def test_get_parse_list(self):
        config = Config([("n", " 5 "), ("ports", "22, ,443,"), ("x", "a")])
        self.assertEqual(config.get("x"), "a")
        self.assertEqual(config.get("missing", "d"), "d")
        self.assertEqual(config.parse("n", int), 5)
        self.assertEqual(config.parse("missing", int, 7), 7)
        self.assertEqual(config.list("ports"), ["22", "443"])
        self.assertEqual(config.list("missing"), [])
        self.assertEqual(list(config.items()), [("n", " 5 "), ("ports", "22, ,443,"), ("x", "a")])

    def test_parse_errors_name_the_key(self):
        with self.assertRaises(PluginError) as e:
            Config({"n": "five"}).parse("n", int)
        self.assertTrue(str(e.exception).startswith("config key n: 'five': invalid literal"))


class SampleTest(unittest.TestCase):
    def test_raise_alert_collects_attributes_as_text(self):
        sample = Sample()
        sample.raise_alert("a", Severity.LOW, "m", port=21).with_attr("extra", 1.5)
        self.assertEqual(len(sample.raised), 1)
        self.assertEqual(sample.raised[0].attributes, {"port": "21", "extra": "1.5"})

    def test_remote_ip_strips_port_and_brackets(self):
        self.assertEqual(Connection("10.0.0.1:443", 1).remote_ip, "10.0.0.1")
        self.assertEqual(Connection("[2001:db8::7]:8883", 1).remote_ip, "2001:db8::7")


class ExportTest(unittest.TestCase):
    def test_export_builds_the_processor_class_without_wasm(self):
        class Nop(Plugin):
            def process(self, sample):
                return Verdict.KEEP

        processor = export(Nop)
        self.assertEqual(processor.__name__, "Processor")
        self.assertTrue(callable(processor().init) and callable(processor().process))



class LazyListTest(unittest.TestCase):
    """The WebAssembly glue leaves socket lists in wire form until read."""

    def sample_with_wire_connections(self, calls):
        def convert(wire):
            calls.append(wire)
            return [Connection(addr, 40000) for addr in wire]

        sample = Sample(thing="t")
        del sample.__dict__["established_connections"]
        sample.__dict__["_wire"] = {"established_connections": (["10.0.0.1:443"], convert)}
        return sample

    def test_converted_on_first_read_only(self):
        calls = []
        sample = self.sample_with_wire_connections(calls)
        self.assertEqual(calls, [])
        self.assertEqual(sample.established_connections[0].remote_ip, "10.0.0.1")
        sample.established_connections.clear()
        self.assertEqual(sample.established_connections, [])
        self.assertEqual(len(calls), 1)

    def test_assignment_wins_without_conversion(self):
        calls = []
        sample = self.sample_with_wire_connections(calls)
        sample.established_connections = []
        self.assertEqual(sample.established_connections, [])
        self.assertEqual(calls, [])

    def test_unknown_attribute_is_an_attribute_error(self):
        with self.assertRaises(AttributeError):
            Sample().no_such_field  # noqa: B018


if __name__ == "__main__":
    unittest.main()
