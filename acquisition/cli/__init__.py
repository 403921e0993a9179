"""``assay``: the bench-side terminal. It talks to the daemon over MQTT only."""
