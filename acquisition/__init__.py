"""The acquisition daemon: runs, journal, MQTT link, commands, and the bench terminal."""

__version__ = "0.1.0"
