"""Flood isolation: a well-behaved client's latency while another client floods the broker.

Starts ``bastion serve`` on a free loopback port (publish budget 100 msg/s per client,
burst 200, throttled), measures publish-to-deliver latency of a client publishing 50 msg/s to itself
for ``--seconds``, first alone, then while a second client floods QoS 0 PUBLISH packets as
fast as the socket takes them. Prints one JSON line per phase (p50/p99 in ms, flood rate
offered and delivered). Bounded in time; loopback only; kills only the broker it started.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body


def _publish_packet(topic: str, payload: bytes) -> bytes:
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + payload
    return bytes([0x30, len(body)]) + body


def _flood(port: int, stop: threading.Event, counter: list[int]) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(_connect_packet("flooder"))
    sock.recv(4)
    chunk = _publish_packet("flood/x", b"x" * 64) * 200
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            sock.sendall(chunk)
            counter[0] += 200
        except (TimeoutError, OSError):
            continue
    sock.close()


def _measure(port: int, seconds: float, rate: float) -> list[float]:
    latencies: list[float] = []

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        sent = float(msg.payload.decode())
        latencies.append((time.perf_counter() - sent) * 1000.0)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe")
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe("probe/echo", qos=0)
    client.loop_start()
    time.sleep(0.3)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client.publish("probe/echo", repr(time.perf_counter()).encode(), qos=0)
        time.sleep(1.0 / rate)
    time.sleep(0.5)
    client.loop_stop()
    client.disconnect()
    return latencies


def _count_deliveries(port: int, counter: list[int]) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flood-sink")

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        counter[0] += 1

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe("flood/#", qos=0)
    client.loop_start()
    return client


def _summary(phase: str, latencies: list[float], extra: dict[str, float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else float("nan")
    doc = {
        "phase": phase,
        "samples": len(ordered),
        "p50_ms": round(statistics.median(ordered), 3) if ordered else None,
        "p99_ms": round(p99, 3),
        **extra,
    }
    return json.dumps(doc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=50.0, help="probe messages per second")
    args = parser.parse_args()
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bastion.toml"
        config.write_text(
            f'[[listeners]]\nhost = "127.0.0.1"\nport = {port}\n'
            "[security]\nallow_anonymous = true\n"
            "[limits.client]\nmessages_per_second = 100.0\nburst_messages = 200.0\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "bastion", "serve", "-c", str(config), "--log-level", "error"],
            env=os.environ.copy(),
        )
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            alone = _measure(port, args.seconds, args.rate)
            print(_summary("alone", alone, {}), flush=True)
            stop = threading.Event()
            offered, delivered = [0], [0]
            sink = _count_deliveries(port, delivered)
            flooder = threading.Thread(target=_flood, args=(port, stop, offered), daemon=True)
            flooder.start()
            started = time.monotonic()
            flooded = _measure(port, args.seconds, args.rate)
            elapsed = time.monotonic() - started
            stop.set()
            flooder.join(5)
            sink.loop_stop()
            sink.disconnect()
            print(
                _summary(
                    "with_flood",
                    flooded,
                    {
                        "flood_offered_per_s": round(offered[0] / elapsed),
                        "flood_delivered_per_s": round(delivered[0] / elapsed),
                    },
                ),
                flush=True,
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
