"""The harness's paho client resumes QoS 1/2 flows the way MQTT requires, even after several
failed reconnection attempts (no broker needed: paho's reset runs before each attempt).

Stock paho-mqtt 2.2 turns an owed PUBREL back into a PUBLISH with DUP 0 on the second attempt
(see ``durable.py``), which would make a correct broker deliver a QoS 2 message twice.
"""

from __future__ import annotations

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import MessageState

from .durable import V5, V311, _paho_client

pytestmark = pytest.mark.crash

ATTEMPTS = 3


def _outgoing(client: paho.Client, mid: int, qos: int, state: MessageState) -> paho.MQTTMessage:
    message = paho.MQTTMessage(mid, b"crash/t")
    message.qos, message.state, message.dup = qos, state, False
    client._out_messages[mid] = message
    return message


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_owed_pubrel_survives_failed_reconnects(version: int) -> None:
    client = _paho_client("crash-resume", version, durable=True)
    if version == V5:
        client._clean_start = False  # what connect_async(clean_start=False) sets
    pubrel = _outgoing(client, 1, 2, paho.mqtt_ms_wait_for_pubcomp)
    pubrec = _outgoing(client, 2, 2, paho.mqtt_ms_wait_for_pubrec)
    puback = _outgoing(client, 3, 1, paho.mqtt_ms_wait_for_puback)
    unsent = _outgoing(client, 4, 2, paho.mqtt_ms_publish)
    for attempt in range(1, ATTEMPTS + 1):
        client._messages_reconnect_reset_out()  # what reconnect() does before each attempt
        assert pubrel.state == paho.mqtt_ms_resend_pubrel, f"attempt {attempt}: {pubrel.state}"
        assert (pubrec.state, pubrec.dup) == (paho.mqtt_ms_publish, True), f"attempt {attempt}"
        assert (puback.state, puback.dup) == (paho.mqtt_ms_publish, True), f"attempt {attempt}"
        assert (unsent.state, unsent.dup) == (paho.mqtt_ms_publish, False), f"attempt {attempt}"
