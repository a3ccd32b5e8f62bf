"""A demo backend and a one-command demo of three backends behind the balancer."""
