#!/usr/bin/env python3
"""Times PublishToIoTCore round trips of the official Python client
(awsiotsdk GreengrassCoreIPCClientV2) against a running test nucleus, as the
peer figure for host/benches/ipc.rs.

    bench_client.py SOCKET SVCUID TOPIC PAYLOAD_FILE COUNT

Prints one JSON line: {"count": N, "mean_us": ..., "median_us": ...}.
"""

import json
import statistics
import sys
import time

import awsiot.greengrasscoreipc
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2


def main():
    sock, token, topic, payload_file, count = sys.argv[1:6]
    payload = open(payload_file, "rb").read()
    ipc = GreengrassCoreIPCClientV2(client=awsiot.greengrasscoreipc.connect(ipc_socket=sock, authtoken=token))
    for _ in range(50):  # warm up
        ipc.publish_to_iot_core(topic_name=topic, qos="1", payload=payload)
    samples = []
    for _ in range(int(count)):
        start = time.perf_counter()
        ipc.publish_to_iot_core(topic_name=topic, qos="1", payload=payload)
        samples.append((time.perf_counter() - start) * 1e6)
    ipc.close()
    print(json.dumps({"count": len(samples), "mean_us": statistics.mean(samples), "median_us": statistics.median(samples)}))


if __name__ == "__main__":
    main()
