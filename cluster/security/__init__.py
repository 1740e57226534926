"""Who may reach what: access, certificates made for a run, Dask TLS."""
