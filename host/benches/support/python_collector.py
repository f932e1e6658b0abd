"""Times the AWS IoT Device Defender agent's collector for benches/collect.rs.

Usage: python_collector.py MIN_CALLS MIN_SECONDS

Each call is timed inside this process (time.perf_counter), so interpreter
start-up and imports are left out, as they would be for the long-running
agent. One untimed call comes first: psutil's cpu_percent and the agent's
delta code both behave differently on the first sample.

Prints one JSON object: per-call microseconds for collect_metrics() alone
and for collect_metrics() followed by to_json_string() (the agent's
equivalent of our collect+encode), plus the number of established
connections the agent saw in its last sample, so the caller can check that
both collectors saw the same sockets.
"""

import json
import sys
import time

from AWSIoTDeviceDefenderAgentSDK.collector import Collector


def main():
    min_calls = int(sys.argv[1])
    min_seconds = float(sys.argv[2])
    collector = Collector(short_metrics_names=False, use_custom_metrics=False)
    collector.collect_metrics()
    collect_us = []
    collect_encode_us = []
    started = time.perf_counter()
    last = None
    while len(collect_us) < min_calls or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        last = collector.collect_metrics()
        t1 = time.perf_counter()
        last.to_json_string()
        t2 = time.perf_counter()
        collect_us.append((t1 - t0) * 1e6)
        collect_encode_us.append((t2 - t0) * 1e6)
    print(json.dumps({
        "collect_us": collect_us,
        "collect_encode_us": collect_encode_us,
        "established": len(last.network_connections),
    }))


if __name__ == "__main__":
    main()
