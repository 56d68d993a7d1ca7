"""Crash-safety suite: kill -9 the broker under MQTT load and check that nothing acknowledged
is lost and no QoS 2 message is duplicated (issue 7, persistence)."""
