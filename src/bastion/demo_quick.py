"""The interim "main job": start a broker, a sample publisher and subscriber, show messages flow.

Runs ``bastion serve`` as a child process on a free loopback port with the sample config's
settings, then connects a paho-mqtt subscriber (``#``) and publisher (the reference system's
three sensors) for a bounded time, printing what arrives. The full ``bastion demo`` (TLS,
credentials, services) replaces this in a later issue.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

SENSORS = (
    ("temp/sensor1", "sensor1", "celsius"),
    ("humid/sensor2", "sensor2", "percent"),
    ("motion/sensor3", "sensor3", "boolean"),
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the broker exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"demo: the broker did not listen on 127.0.0.1:{port} within {timeout}s")


def _reading(topic: str, device: str, unit: str, t: float) -> bytes:
    if unit == "celsius":
        value: float | bool = round(21.0 + 3.0 * math.sin(t / 5.0) + random.gauss(0, 0.2), 2)
    elif unit == "percent":
        value = round(45.0 - 8.0 * math.sin(t / 5.0) + random.gauss(0, 0.5), 1)
    else:
        value = random.random() < 0.2
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    doc = {"device": device, "ts": stamp, "value": value, "unit": unit, "topic": topic}
    return json.dumps(doc).encode()


def _run_clients(port: int, duration: float) -> int:
    inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        inbox.put((msg.topic, bytes(msg.payload)))

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-logger", protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe("#", qos=1)
    sub.loop_start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-sensors", protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    time.sleep(0.3)
    received = 0
    started = time.monotonic()
    try:
        while time.monotonic() - started < duration:
            t = time.monotonic() - started
            for topic, device, unit in SENSORS:
                qos = 1 if topic.startswith("motion/") else 0
                pub.publish(topic, _reading(topic, device, unit, t), qos=qos)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                try:
                    topic, payload = inbox.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                received += 1
                print(f"  {topic:<16} {payload.decode(errors='replace')}", flush=True)
    finally:
        pub.loop_stop()
        pub.disconnect()
        sub.loop_stop()
        sub.disconnect()
    print(f"demo: {received} messages delivered through the broker in {duration:.0f}s")
    return 0 if received else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bastion.demo_quick", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to run (10)")
    args = parser.parse_args(argv)
    if not 0 < args.duration <= 3600:
        parser.error("--duration must be between 0 and 3600 seconds")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="bastion-demo-") as tmp:
        config = Path(tmp) / "bastion.toml"
        config.write_text(
            "[[listeners]]\n"
            f'host = "127.0.0.1"\nport = {port}\n\n'
            "[security]\nallow_anonymous = true  # development only\n\n"
            "[mqtt]\nsys_interval = 5.0\n\n"
            '[storage]\ndata_dir = "state"  # encrypted, next to this temporary config\n'
        )
        cmd = [sys.executable, "-m", "bastion", "serve", "-c", str(config)]
        print(f"demo: starting broker: {' '.join(cmd)}", flush=True)
        proc = subprocess.Popen(cmd, env=os.environ.copy())
        try:
            _wait_for_port(port, proc, timeout=15.0)
            print(
                f"demo: broker listening on 127.0.0.1:{port}; publishing for {args.duration:.0f}s",
                flush=True,
            )
            code = _run_clients(port, args.duration)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        print(f"demo: broker stopped with exit code {proc.returncode}")
    return code if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
