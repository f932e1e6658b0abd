#!/usr/bin/env python3
"""A strict stand-in for the Greengrass nucleus IPC server, for tests.

No real nucleus can run in CI (the Java nucleus is a CDN download, nucleus
lite is not packaged), so this plays its part over a Unix socket. It is
strict on purpose: every frame is checked (both CRCs, size limit, the three
i32 headers, Connect first and only once with the right version and token,
stream ids previous + 1, request shapes, base64, qos strings), and every
departure from the protocol is recorded as a "violation" besides being
answered the way the real nucleus answers it. Tests fail when any violation
was recorded. The server itself is checked against the official Python client
(tests/nucleus/conformance.py).

Answers follow the Java nucleus (`...Response` models, TERMINATE_STREAM on
unary answers) or, with --lite, nucleus lite (flags always 0, the client
closes streams, 10,000-byte frames, rejection by closing).

See README.md for the command line and the control protocol.
"""

import argparse
import asyncio
import base64
import binascii
import json
import os
import struct
import sys
import time
import zlib

MESSAGE_TYPE = ":message-type"
MESSAGE_FLAGS = ":message-flags"
STREAM_ID = ":stream-id"

APPLICATION_MESSAGE, APPLICATION_ERROR, PING, PING_RESPONSE = 0, 1, 2, 3
CONNECT, CONNECT_ACK, PROTOCOL_ERROR, INTERNAL_ERROR = 4, 5, 6, 7
CONNECTION_ACCEPTED, TERMINATE_STREAM = 1, 2

JAVA_MAX_FRAME = 16 * 1024 * 1024
LITE_MAX_FRAME = 10_000

GG = "aws.greengrass#"


# ---------------------------------------------------------------- frames


class FrameError(Exception):
    pass


def crc(data):
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_headers(headers):
    out = bytearray()
    for name, value in headers:
        raw = name.encode()
        out += bytes([len(raw)]) + raw
        if isinstance(value, bool):
            out += bytes([0 if value else 1])
        elif isinstance(value, int):
            out += bytes([4]) + struct.pack(">i", value)
        else:
            data = value.encode()
            out += bytes([7]) + struct.pack(">H", len(data)) + data
    return bytes(out)


def encode_frame(headers, payload=b""):
    hdr = encode_headers(headers)
    total = 16 + len(hdr) + len(payload)
    prelude = struct.pack(">II", total, len(hdr))
    body = prelude + struct.pack(">I", crc(prelude)) + hdr + payload
    return body + struct.pack(">I", crc(body))


def decode_headers(data):
    headers = {}
    order = []
    i = 0
    while i < len(data):
        n = data[i]
        i += 1
        if n == 0 or i + n > len(data):
            raise FrameError("bad header name length")
        name = data[i : i + n].decode()
        i += n
        if i >= len(data):
            raise FrameError("header %s has no type" % name)
        t = data[i]
        i += 1
        if t in (0, 1):
            value = t == 0
        elif t == 2:
            value = struct.unpack(">b", data[i : i + 1])[0]
            i += 1
        elif t == 3:
            value = struct.unpack(">h", data[i : i + 2])[0]
            i += 2
        elif t == 4:
            if i + 4 > len(data):
                raise FrameError("header %s truncated" % name)
            value = ("i32", struct.unpack(">i", data[i : i + 4])[0])
            i += 4
        elif t in (5, 8):
            value = struct.unpack(">q", data[i : i + 8])[0]
            i += 8
        elif t in (6, 7):
            (ln,) = struct.unpack(">H", data[i : i + 2])
            i += 2
            raw = data[i : i + ln]
            if len(raw) != ln:
                raise FrameError("header %s truncated" % name)
            i += ln
            value = ("str", raw.decode()) if t == 7 else raw
        elif t == 9:
            value = data[i : i + 16]
            i += 16
        else:
            raise FrameError("header %s has unknown type %d" % (name, t))
        headers[name] = value
        order.append(name)
    return headers, order


async def read_frame(reader, max_frame):
    prelude = await reader.readexactly(12)
    total, hl, pcrc = struct.unpack(">III", prelude)
    if crc(prelude[:8]) != pcrc:
        raise FrameError("prelude CRC mismatch")
    if total < 16 or hl > total - 16:
        raise FrameError("bad lengths total=%d headers=%d" % (total, hl))
    if total > max_frame:
        raise FrameError("frame of %d bytes exceeds the %d-byte limit" % (total, max_frame))
    rest = await reader.readexactly(total - 12)
    frame = prelude + rest
    (mcrc,) = struct.unpack(">I", frame[-4:])
    if crc(frame[:-4]) != mcrc:
        raise FrameError("message CRC mismatch")
    headers, order = decode_headers(frame[12 : 12 + hl])
    return headers, order, frame[12 + hl : -4], total


def i32(headers, name):
    v = headers.get(name)
    return v[1] if isinstance(v, tuple) and v[0] == "i32" else None


def string(headers, name):
    v = headers.get(name)
    return v[1] if isinstance(v, tuple) and v[0] == "str" else None


# ---------------------------------------------------------------- shapes


class BadRequest(Exception):
    """A request the real nucleus answers with InvalidArgumentsError."""


def b64(value, what):
    if not isinstance(value, str):
        raise BadRequest("%s must be a base64 string" % what)
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as e:
        raise BadRequest("%s is not valid base64: %s" % (what, e))


def only_keys(body, allowed, what):
    extra = set(body) - set(allowed)
    if extra:
        raise BadRequest("%s has unknown fields %s" % (what, sorted(extra)))


def check_qos(value, lite):
    if value in ("0", "1"):
        return value
    if lite and value in (0, 1):
        return str(value)
    raise BadRequest("qos must be the string \"0\" or \"1\", got %r" % (value,))


def key_path(body, what):
    kp = body.get("keyPath", [])
    if not isinstance(kp, list) or not all(isinstance(k, str) for k in kp):
        raise BadRequest("%s.keyPath must be a list of strings" % what)
    return kp


def topic_matches(filt, topic):
    f, t = filt.split("/"), topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(f) == len(t)


# ---------------------------------------------------------------- server


class Nucleus:
    def __init__(self, args):
        self.args = args
        self.lite = args.lite
        self.max_frame = args.max_frame or (LITE_MAX_FRAME if args.lite else JAVA_MAX_FRAME)
        self.config = {}
        if args.config:
            with open(args.config) as f:
                self.config = json.load(f)
        self.record_file = open(args.record, "a", buffering=1) if args.record else None
        self.connections = {}
        self.next_conn = 1
        # Injections, consumed in order.
        self.fail = {}  # operation -> [(error, message), ...]
        self.delay = {}  # operation -> [seconds, ...]
        self.drop_on = {}  # operation -> count
        self.reject_connects = 0
        self.auto_reply = None  # None, "accepted" or "rejected"
        self.violations = 0

    def record(self, event, **fields):
        fields["event"] = event
        fields["t"] = round(time.time(), 6)
        if self.record_file:
            self.record_file.write(json.dumps(fields, sort_keys=True) + "\n")

    # ---- connections

    async def serve_client(self, reader, writer):
        conn = Conn(self, reader, writer, self.next_conn)
        self.next_conn += 1
        self.connections[conn.id] = conn
        try:
            await conn.run()
        finally:
            self.connections.pop(conn.id, None)
            conn.close()
            self.record("disconnect", conn=conn.id, reason=conn.end_reason)

    # ---- events pushed to clients

    def deliver(self, topic, payload):
        body = json.dumps({"message": {"topicName": topic, "payload": base64.b64encode(payload).decode()}})
        n = 0
        for conn in list(self.connections.values()):
            for sid, sub in list(conn.subscriptions.items()):
                if sub[0] == "iot" and topic_matches(sub[1], topic):
                    conn.send_event(sid, GG + "IoTCoreMessage", body)
                    n += 1
        self.record("delivered", topic=topic, subscribers=n)
        return n

    def config_update(self, path, value=None, set_value=False):
        if set_value:
            if not path:
                self.config = value
            else:
                node = self.config
                for k in path[:-1]:
                    node = node.setdefault(k, {})
                node[path[-1]] = value
        body = json.dumps({"configurationUpdateEvent": {"componentName": self.args.component_name, "keyPath": path}})
        n = 0
        for conn in list(self.connections.values()):
            for sid, sub in list(conn.subscriptions.items()):
                if sub[0] == "config":
                    kp = sub[1]
                    if kp == path[: len(kp)] or path == kp[: len(path)]:
                        conn.send_event(sid, GG + "ConfigurationUpdateEvents", body)
                        n += 1
        self.record("config_update", key_path=path, subscribers=n)
        return n

    # ---- control socket

    async def serve_control(self, reader, writer):
        while True:
            line = await reader.readline()
            if not line:
                break
            try:
                reply = await self.control(json.loads(line))
                reply["ok"] = True
            except Exception as e:  # report, never crash the server
                reply = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
            writer.write((json.dumps(reply) + "\n").encode())
            await writer.drain()
        writer.close()

    async def control(self, cmd):
        c = cmd["cmd"]
        if c == "deliver":
            payload = base64.b64decode(cmd["payload_b64"]) if "payload_b64" in cmd else cmd.get("payload", "").encode()
            return {"subscribers": self.deliver(cmd["topic"], payload)}
        if c == "config_update":
            return {"subscribers": self.config_update(cmd["key_path"], cmd.get("value"), "value" in cmd)}
        if c == "config_burst":
            # A deployment that changes `count` keys under key_path: one event
            # per key, all written before anything is read.
            n = 0
            for i in range(cmd["count"]):
                n += self.config_update(cmd["key_path"] + ["k%d" % i])
            return {"events": n}
        if c == "fail":
            self.fail.setdefault(cmd["operation"], []).extend(
                [(cmd.get("error", "ServiceError"), cmd.get("message", "injected failure"))] * cmd.get("count", 1)
            )
            return {}
        if c == "delay":
            self.delay.setdefault(cmd["operation"], []).extend([cmd["seconds"]] * cmd.get("count", 1))
            return {}
        if c == "drop_on":
            self.drop_on[cmd["operation"]] = self.drop_on.get(cmd["operation"], 0) + cmd.get("count", 1)
            return {}
        if c == "reject_connects":
            self.reject_connects += cmd.get("count", 1)
            return {}
        if c == "auto_reply":
            self.auto_reply = cmd.get("mode")
            return {}
        if c in ("drop", "inject", "ping"):
            conns = list(self.connections.values())
            for conn in conns:
                if c == "drop":
                    conn.end_reason = "dropped by control command"
                    conn.close()
                elif c == "ping":
                    conn.write(encode_frame([(MESSAGE_TYPE, PING), (MESSAGE_FLAGS, 0), (STREAM_ID, 0)], cmd.get("payload", "").encode()))
                else:
                    conn.write(bad_bytes(cmd["kind"], cmd.get("bytes", 300_000)))
            return {"connections": len(conns)}
        if c == "end_subscriptions":
            n = 0
            for conn in list(self.connections.values()):
                for sid in list(conn.subscriptions):
                    conn.end_stream(sid)
                    n += 1
            return {"ended": n}
        if c == "status":
            return {
                "connections": len(self.connections),
                "violations": self.violations,
                "subscriptions": sum(len(x.subscriptions) for x in self.connections.values()),
            }
        raise ValueError("unknown command %r" % c)


def bad_bytes(kind, size):
    """Bytes a broken peer might send, each tripping one client check."""
    good = encode_frame([(MESSAGE_TYPE, PING), (MESSAGE_FLAGS, 0), (STREAM_ID, 0)], b"hello")
    if kind == "garbage":
        return b"HTTP/1.1 400 Bad Request\r\n\r\nthis is not an event stream"
    if kind == "bad_crc":
        return good[:-1] + bytes([good[-1] ^ 0xFF])
    if kind == "oversized":
        return encode_frame([(MESSAGE_TYPE, PING), (MESSAGE_FLAGS, 0), (STREAM_ID, 0)], b"x" * size)
    if kind == "truncated":
        return good[: len(good) // 2]
    raise ValueError("unknown kind %r" % kind)


class Conn:
    def __init__(self, nucleus, reader, writer, conn_id):
        self.n = nucleus
        self.reader = reader
        self.writer = writer
        self.id = conn_id
        self.connected = False
        self.last_stream = 0
        self.open_streams = {}  # stream id -> operation, streams the client may still use
        self.ended_streams = set()  # streams the server ended
        self.subscriptions = {}  # stream id -> ("iot", filter) or ("config", keyPath)
        self.publishes = {}  # stream id -> (topic, payload), for auto replies
        self.end_reason = "client closed the connection"
        self.closed = False

    def write(self, data):
        if not self.closed:
            self.writer.write(data)

    def close(self):
        if not self.closed:
            self.closed = True
            self.writer.close()

    def violation(self, reason, **fields):
        """Records a protocol violation and answers it as the nucleus does:
        Java sends ProtocolError and closes, lite just closes."""
        self.n.violations += 1
        self.n.record("violation", conn=self.id, reason=reason, **fields)
        if not self.n.lite:
            self.write(
                encode_frame(
                    [(MESSAGE_TYPE, PROTOCOL_ERROR), (MESSAGE_FLAGS, 0), (STREAM_ID, 0), (":content-type", "application/json")],
                    json.dumps({"message": reason}).encode(),
                )
            )
        self.end_reason = "protocol violation: " + reason
        self.close()

    async def run(self):
        while not self.closed:
            try:
                headers, order, payload, size = await read_frame(self.reader, self.n.max_frame)
            except asyncio.IncompleteReadError as e:
                if e.partial:
                    self.violation("connection closed in the middle of a frame")
                return
            except (ConnectionError, OSError):
                return
            except FrameError as e:
                self.violation(str(e))
                return
            if not self.handle(headers, order, payload, size):
                return

    # ---- one frame

    def handle(self, headers, order, payload, size):
        mtype, flags, sid = i32(headers, MESSAGE_TYPE), i32(headers, MESSAGE_FLAGS), i32(headers, STREAM_ID)
        if mtype is None or flags is None or sid is None:
            self.violation("frame lacks an i32 :message-type, :message-flags or :stream-id", headers=order)
            return False
        self.n.record("frame", conn=self.id, type=mtype, flags=flags, stream=sid, bytes=size, headers=order)
        if not self.connected:
            return self.handle_connect(headers, mtype, flags, sid, payload)
        if mtype == CONNECT:
            self.violation("second Connect on one connection")
            return False
        if sid == 0:
            if mtype == PING:
                self.write(encode_frame([(MESSAGE_TYPE, PING_RESPONSE), (MESSAGE_FLAGS, 0), (STREAM_ID, 0)], payload))
                self.n.record("ping", conn=self.id)
                return True
            if mtype == PING_RESPONSE:
                self.n.record("ping_response", conn=self.id, payload=payload.decode(errors="replace"))
                return True
            self.violation("message type %d on stream 0" % mtype)
            return False
        if mtype not in (APPLICATION_MESSAGE, APPLICATION_ERROR):
            self.violation("message type %d on stream %d" % (mtype, sid))
            return False
        if sid in self.ended_streams:
            self.violation("frame on stream %d, which the server already ended" % sid, stream=sid)
            return False
        if sid in self.open_streams:
            return self.handle_stream_message(sid, flags, payload)
        if sid != self.last_stream + 1:
            self.violation("new stream id %d, expected %d" % (sid, self.last_stream + 1), stream=sid)
            return False
        self.last_stream = sid
        return self.handle_request(headers, sid, flags, payload)

    def handle_connect(self, headers, mtype, flags, sid, payload):
        if mtype != CONNECT:
            self.violation("first frame is type %d, not Connect" % mtype)
            return False
        if sid != 0 or flags != 0:
            self.violation("Connect must have stream 0 and flags 0")
            return False
        if string(headers, ":version") != "0.1.0":
            self.violation("Connect :version is %r, expected \"0.1.0\"" % (headers.get(":version"),))
            return False
        try:
            body = json.loads(payload)
        except ValueError:
            self.violation("Connect payload is not JSON")
            return False
        allowed = {"authToken", "componentName"} if self.n.lite else {"authToken"}
        if not isinstance(body, dict) or set(body) - allowed:
            self.violation("Connect payload has unexpected fields: %r" % (body,))
            return False
        token_ok = body.get("authToken") == self.n.args.svcuid
        injected = self.n.reject_connects > 0
        if injected:
            self.n.reject_connects -= 1
        if not token_ok or injected:
            self.n.record("connect_rejected", conn=self.id, reason="injected" if injected else "wrong authToken")
            if not self.n.lite:
                self.write(encode_frame([(MESSAGE_TYPE, CONNECT_ACK), (MESSAGE_FLAGS, 0), (STREAM_ID, 0)]))
            self.end_reason = "connect rejected"
            self.close()
            return False
        self.connected = True
        self.write(encode_frame([(MESSAGE_TYPE, CONNECT_ACK), (MESSAGE_FLAGS, CONNECTION_ACCEPTED), (STREAM_ID, 0)]))
        self.n.record("connect", conn=self.id)
        return True

    def handle_stream_message(self, sid, flags, payload):
        # The only client message on an open stream we expect is the close.
        if flags & TERMINATE_STREAM and not payload:
            op = self.open_streams.pop(sid)
            self.subscriptions.pop(sid, None)
            self.n.record("client_close", conn=self.id, stream=sid, operation=op)
            return True
        self.violation("unexpected message on open stream %d" % sid, stream=sid)
        return False

    # ---- requests

    def handle_request(self, headers, sid, flags, payload):
        op = string(headers, "operation")
        model = string(headers, "service-model-type")
        content_type = headers.get(":content-type")
        if op is None:
            self.violation("stream %d starts without an operation header" % sid, stream=sid)
            return False
        if flags != 0:
            self.violation("request on stream %d has flags %d" % (sid, flags), stream=sid)
            return False
        if content_type is not None and string(headers, ":content-type") != "application/json":
            self.violation("request :content-type is %r" % (content_type,), stream=sid)
            return False
        if model is not None and model != op + "Request":
            self.violation("service-model-type %r does not match operation %r" % (model, op), stream=sid)
            return False
        if model is None and not self.n.lite:
            self.violation("request without service-model-type", stream=sid)
            return False
        try:
            body = json.loads(payload)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError as e:
            self.violation("request body is not a JSON object: %s" % e, stream=sid)
            return False
        name = op[len(GG) :] if op.startswith(GG) else op
        self.n.record("request", conn=self.id, stream=sid, operation=name, body=body, bytes_payload=len(payload))
        self.open_streams[sid] = name

        handler = getattr(self, "op_" + name, None)
        if handler is None:
            self.violation("unsupported operation %s" % op, stream=sid)
            return False
        if self.n.drop_on.get(name, 0) > 0:
            self.n.drop_on[name] -= 1
            self.n.record("dropped_on_request", conn=self.id, stream=sid, operation=name)
            self.end_reason = "dropped on %s by control command" % name
            self.close()
            return False
        fails = self.n.fail.get(name)
        try:
            if fails:
                error, message = fails.pop(0)
                raise Injected(error, message)
            result = handler(body, sid)
        except BadRequest as e:
            # The client sent something the real nucleus rejects: a bug in the
            # client under test, so it is also a violation.
            self.n.violations += 1
            self.n.record("violation", conn=self.id, stream=sid, reason="invalid %s request: %s" % (name, e))
            self.reply_error(sid, name, "InvalidArgumentsError", str(e))
            return True
        except Injected as e:
            self.reply_error(sid, name, e.error, e.message)
            return True
        except NotFound as e:
            self.reply_error(sid, name, "ResourceNotFoundError", str(e))
            return True
        response, streaming = result
        delays = self.n.delay.get(name)
        delay = delays.pop(0) if delays else 0
        if delay:
            asyncio.get_running_loop().call_later(delay, self.reply, sid, name, response, streaming)
        else:
            self.reply(sid, name, response, streaming)
        return True

    def reply(self, sid, name, response, streaming):
        if self.closed:
            return
        ended = not streaming and not self.n.lite
        flags = TERMINATE_STREAM if ended else 0
        self.write(
            encode_frame(
                [
                    (MESSAGE_TYPE, APPLICATION_MESSAGE),
                    (MESSAGE_FLAGS, flags),
                    (STREAM_ID, sid),
                    (":content-type", "application/json"),
                    ("service-model-type", GG + name + "Response"),
                ],
                json.dumps(response).encode(),
            )
        )
        if ended:
            self.open_streams.pop(sid, None)
            self.ended_streams.add(sid)
        self.n.record("response", conn=self.id, stream=sid, operation=name, flags=flags)
        publish = self.publishes.pop(sid, None)
        if publish and self.n.auto_reply:
            self.auto_reply(publish)

    def reply_error(self, sid, name, error, message):
        if self.n.lite:
            body, flags = {"_message": message, "_errorCode": error}, 0
        else:
            body = {"_service": GG + "GreengrassCoreIPC", "_message": message, "_errorCode": error, "message": message}
            flags = TERMINATE_STREAM
        self.write(
            encode_frame(
                [
                    (MESSAGE_TYPE, APPLICATION_ERROR),
                    (MESSAGE_FLAGS, flags),
                    (STREAM_ID, sid),
                    (":content-type", "application/json"),
                    ("service-model-type", GG + error),
                ],
                json.dumps(body).encode(),
            )
        )
        if flags:
            self.open_streams.pop(sid, None)
            self.ended_streams.add(sid)
        self.subscriptions.pop(sid, None)
        self.n.record("error_reply", conn=self.id, stream=sid, operation=name, error=error)

    def send_event(self, sid, model, body):
        self.write(
            encode_frame(
                [
                    (MESSAGE_TYPE, APPLICATION_MESSAGE),
                    (MESSAGE_FLAGS, 0),
                    (STREAM_ID, sid),
                    (":content-type", "application/json"),
                    ("service-model-type", model),
                ],
                body.encode(),
            )
        )

    def end_stream(self, sid):
        """Ends a stream from the server side, as a nucleus does when it drops a subscription."""
        self.write(encode_frame([(MESSAGE_TYPE, APPLICATION_MESSAGE), (MESSAGE_FLAGS, TERMINATE_STREAM), (STREAM_ID, sid)]))
        self.subscriptions.pop(sid, None)
        self.open_streams.pop(sid, None)
        self.ended_streams.add(sid)
        self.n.record("server_end", conn=self.id, stream=sid)

    def auto_reply(self, publish):
        """Answers a Device Defender report the way the cloud would, on
        `<topic>/accepted` or `<topic>/rejected`."""
        topic, payload = publish
        try:
            report_id = json.loads(payload)["header"]["report_id"]
        except Exception:
            report_id = None
        thing = topic.split("/")[2] if topic.startswith("$aws/things/") else "unknown"
        status = self.n.auto_reply.upper()
        reply = {"thingName": thing, "status": status, "timestamp": int(time.time() * 1000)}
        if report_id is not None:
            reply["reportId"] = report_id
        if status == "REJECTED":
            reply["statusDetails"] = {"ErrorCode": "InvalidPayload", "ErrorMessage": "injected rejection"}
        self.n.deliver(topic + "/" + self.n.auto_reply, json.dumps(reply).encode())

    # ---- operations: (response body, stream stays open for events)

    def op_PublishToIoTCore(self, body, sid):
        allowed = {"topicName", "qos", "payload", "retain", "userProperties", "messageExpiryIntervalSeconds",
                   "correlationData", "responseTopic", "payloadFormat", "contentType"}
        only_keys(body, allowed, "PublishToIoTCoreRequest")
        topic = body.get("topicName")
        if not isinstance(topic, str) or not topic:
            raise BadRequest("topicName must be a non-empty string")
        check_qos(body.get("qos"), self.n.lite)
        if "payload" not in body and not self.n.lite:
            raise BadRequest("payload is required")
        payload = b64(body.get("payload", ""), "payload")
        self.publishes[sid] = (topic, payload)
        return {}, False

    def op_SubscribeToIoTCore(self, body, sid):
        only_keys(body, {"topicName", "qos"}, "SubscribeToIoTCoreRequest")
        topic = body.get("topicName")
        if not isinstance(topic, str) or not topic:
            raise BadRequest("topicName must be a non-empty string")
        check_qos(body.get("qos"), self.n.lite)
        self.subscriptions[sid] = ("iot", topic)
        return {}, True

    def op_GetConfiguration(self, body, sid):
        only_keys(body, {"keyPath", "componentName"}, "GetConfigurationRequest")
        kp = key_path(body, "GetConfigurationRequest")
        node = self.n.config
        for k in kp:
            if not isinstance(node, dict) or k not in node:
                raise NotFound("key path %s not found" % kp)
            node = node[k]
        # The nucleus wraps a leaf in an object named after its key.
        value = node if isinstance(node, dict) else {kp[-1]: node}
        return {"componentName": body.get("componentName", self.n.args.component_name), "value": value}, False

    def op_SubscribeToConfigurationUpdate(self, body, sid):
        only_keys(body, {"keyPath", "componentName"}, "SubscribeToConfigurationUpdateRequest")
        self.subscriptions[sid] = ("config", key_path(body, "SubscribeToConfigurationUpdateRequest"))
        return {}, True

    def op_UpdateState(self, body, sid):
        only_keys(body, {"state"}, "UpdateStateRequest")
        if body.get("state") not in ("RUNNING", "ERRORED"):
            raise BadRequest("state must be RUNNING or ERRORED, got %r" % (body.get("state"),))
        return {}, False

    def op_PublishToTopic(self, body, sid):
        only_keys(body, {"topic", "publishMessage"}, "PublishToTopicRequest")
        if not isinstance(body.get("topic"), str) or not body["topic"]:
            raise BadRequest("topic must be a non-empty string")
        msg = body.get("publishMessage")
        if not isinstance(msg, dict) or len(msg) != 1 or not set(msg) <= {"jsonMessage", "binaryMessage"}:
            raise BadRequest("publishMessage must hold exactly one of jsonMessage, binaryMessage")
        if "binaryMessage" in msg:
            bm = msg["binaryMessage"]
            if not isinstance(bm, dict):
                raise BadRequest("binaryMessage must be an object")
            only_keys(bm, {"message", "context"}, "BinaryMessage")
            b64(bm.get("message"), "binaryMessage.message")
        return {}, False


class Injected(Exception):
    def __init__(self, error, message):
        super().__init__(message)
        self.error, self.message = error, message


class NotFound(Exception):
    pass


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--socket", required=True, help="IPC socket path to listen on")
    p.add_argument("--svcuid", required=True, help="the authToken clients must present")
    p.add_argument("--lite", action="store_true", help="behave like nucleus lite")
    p.add_argument("--config", help="JSON document served by GetConfiguration")
    p.add_argument("--component-name", default="com.example.DefenderEdge")
    p.add_argument("--record", help="append every event as a JSON line to this file")
    p.add_argument("--control", help="Unix socket for JSON-line control commands")
    p.add_argument("--max-frame", type=int, help="frame limit (default 16 MiB, 10000 with --lite)")
    args = p.parse_args()
    nucleus = Nucleus(args)
    for path in (args.socket, args.control):
        if path and os.path.exists(path):
            os.unlink(path)
    server = await asyncio.start_unix_server(nucleus.serve_client, path=args.socket)
    if args.control:
        await asyncio.start_unix_server(nucleus.serve_control, path=args.control)
    print("READY %s" % args.socket, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
