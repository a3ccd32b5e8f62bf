"""Sessions: the two legs' protocols, the session, failover, splice, HTTP proxying, the registry."""
