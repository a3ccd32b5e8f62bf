"""The backend side (Envoy's cluster): pools, picking, health, poller, dialer, routing,
affinity, discovery."""
