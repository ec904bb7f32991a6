"""Scale-out: the scale bench (aggregate throughput with N replicas, restore time per 100k agents)."""
