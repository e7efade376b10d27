# Uplink firmware: gets an ESP32's readings to an IoT cloud and keeps them until acknowledged.
VERSION = "0.1.0"
