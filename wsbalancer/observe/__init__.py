"""What the balancer tells: logs, counters, worker metric merging (the ground floor)."""
