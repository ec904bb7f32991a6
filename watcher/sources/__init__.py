"""I/O at the edge: Kafka clients, the dead-letter topic, checkpoints."""
