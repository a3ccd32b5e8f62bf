"""The assembly: twistd plugin service, workers, TLS reload, sd_notify, the command line."""
